from pathlib import Path

import pytest

from uniflow.config import ConfigError, load_config, to_yaml
from uniflow.stages import RunConfig
from uniflow.tokenizer.config import TokenizerConfig, load_tokenizer_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "tokenizer"


def test_defaults_and_overrides_are_typed():
    cfg = load_config(
        None, ["tokenizer.decoder.width=32", "optim.betas=[0.8,0.9]", "tokenizer.encoder.checkpoint=null"]
    )
    assert isinstance(cfg, RunConfig) and isinstance(cfg.tokenizer, TokenizerConfig)
    assert cfg.tokenizer.decoder.width == 32 and cfg.optim.betas == [0.8, 0.9]
    assert cfg.tokenizer.encoder.checkpoint is None


def test_unknown_key_names_the_key_and_the_valid_choices():
    with pytest.raises(ConfigError, match=r"unknown config key 'tokenizer.decoder.widht'.*'width'"):
        load_config(None, ["tokenizer.decoder.widht=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'nope'.*'tokenizer'"):
        load_config({"nope": 1})


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"'tokenizer\.decoder\.width'"):
        load_config(None, ["tokenizer.decoder.width=wide"])


def test_value_outside_choices_lists_them():
    with pytest.raises(ConfigError, match=r"'tokenizer.distill.normalization' = 'bogus'.*'figure'"):
        load_config(None, ["tokenizer.distill.normalization=bogus"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["tokenizer.decoder.width"])
    with pytest.raises(ConfigError, match=str(tmp_path / "missing.yaml")):
        load_config(tmp_path / "missing.yaml")


def test_base_inheritance_and_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("name: a\ntokenizer:\n  decoder:\n    width: 16\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\nname: b\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg.name == "b" and cfg.tokenizer.decoder.width == 16
    (tmp_path / "c.yaml").write_text("_base_: d.yaml\n")
    (tmp_path / "d.yaml").write_text("_base_: c.yaml\n")
    with pytest.raises(ConfigError, match="cyclic"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_config_loads(path, tmp_path):
    cfg = load_config(path)
    assert cfg.tokenizer.encoder.image_size > 0
    # The resolved config written next to a run loads back to the same object.
    resolved = tmp_path / "config.yaml"
    resolved.write_text(to_yaml(cfg))
    assert load_config(resolved) == cfg


def test_named_variants_share_the_released_decoder():
    base = load_tokenizer_config(EXPERIMENTS / "internvit300m.yaml")
    for name in ("siglip2_so400m", "dinov2_l", "dfn_clip_l"):
        cfg = load_tokenizer_config(EXPERIMENTS / f"{name}.yaml")
        assert cfg.decoder == base.decoder and cfg.image_size == 448
        assert cfg.encoder.name != base.encoder.name
    assert (base.decoder.latent_dim, base.decoder.gtb_depth, base.decoder.head_depth, base.decoder.head_width) == (
        64, 6, 12, 1024)  # fmt: skip


def test_tokenizer_config_from_bare_mapping_and_run_yaml(tiny_config_path):
    bare = load_tokenizer_config({"image_size": 32})
    assert bare.image_size == 32
    run = load_tokenizer_config(tiny_config_path, ["tokenizer.image_size=48"])
    assert run.image_size == 48 and run.encoder.kwargs["patch_size"] == 8
