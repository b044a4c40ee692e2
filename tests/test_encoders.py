"""Every backend: build a small random model, save it, load it back through the backend's real loading path."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from uniflow.encoders import build_encoder
from uniflow.tokenizer.config import EncoderConfig

TIMM_KWARGS = {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}


def _check_features(enc, images, depth, width, prefix):
    feats = enc(enc.normalize(images))
    grid = (images.shape[-2] // enc.patch_size, images.shape[-1] // enc.patch_size)
    assert feats.grid == grid
    assert len(feats.layers) == len(feats.prefix) == depth
    for layer, pre in zip(feats.layers, feats.prefix):
        assert layer.shape == (images.shape[0], grid[0] * grid[1], width)
        assert pre.shape == (images.shape[0], prefix, width)
    return feats


# ------------------------------------------------------------------------------------------- timm
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_local_checkpoint_roundtrip(tmp_path, suffix):
    import timm

    source = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5, **TIMM_KWARGS).eval()
    path = tmp_path / f"vit{suffix}"
    state = source.state_dict()
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    cfg = EncoderConfig(backend="timm", name="vit_tiny_patch16_224", checkpoint=str(path), image_size=32,
                        kwargs=TIMM_KWARGS)  # fmt: skip
    enc = build_encoder(cfg).eval()
    assert (enc.patch_size, enc.width, enc.depth, enc.num_prefix_tokens) == (8, 32, 3, 1)
    x = torch.rand(2, 3, 32, 32)
    feats = _check_features(enc, x, depth=3, width=32, prefix=1)
    # Same weights as the source model: its last block output must match ours.
    expected = source.forward_intermediates(
        enc.normalize(x), indices=1, intermediates_only=True, output_fmt="NLC"
    )
    torch.testing.assert_close(feats.last, expected[-1])
    # Another resolution works (position embeddings resampled) and registers are split off as prefix.
    _check_features(enc, torch.rand(1, 3, 48, 40), depth=3, width=32, prefix=1)


def test_timm_register_tokens_are_prefix():
    cfg = EncoderConfig(name="vit_tiny_patch16_224", image_size=32, kwargs={**TIMM_KWARGS, "reg_tokens": 4})
    _check_features(build_encoder(cfg), torch.rand(1, 3, 32, 32), depth=3, width=32, prefix=5)


def test_timm_normalisation_comes_from_the_pretrained_config():
    enc = build_encoder(EncoderConfig(name="vit_small_patch14_dinov2", image_size=28,
                                      kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2}))  # fmt: skip
    assert enc.mean == pytest.approx((0.485, 0.456, 0.406))
    override = build_encoder(EncoderConfig(image_size=32, kwargs=TIMM_KWARGS, mean=[0.5] * 3, std=[0.5] * 3))
    assert override.mean == (0.5, 0.5, 0.5)


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    for backend, name in (("timm", "vit_tiny_patch16_224"), ("open_clip", "ViT-B-32"), ("hf", str(tmp_path))):
        cfg = EncoderConfig(backend=backend, name=name, checkpoint=str(missing), kwargs={})
        with pytest.raises(FileNotFoundError, match=str(missing) if backend != "hf" else "config.json"):
            build_encoder(cfg)


# -------------------------------------------------------------------------------------- open_clip
def test_open_clip_local_checkpoint_roundtrip(tmp_path):
    import open_clip

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
    }
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "uniflow-test-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "cfg")
    source = open_clip.create_model("uniflow-test-clip").eval()
    torch.save(source.state_dict(), tmp_path / "clip.pt")
    cfg = EncoderConfig(backend="open_clip", name="uniflow-test-clip", checkpoint=str(tmp_path / "clip.pt"),
                        image_size=32)  # fmt: skip
    enc = build_encoder(cfg).eval()
    assert (enc.patch_size, enc.width, enc.depth) == (8, 32, 2)
    assert enc.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    x = torch.rand(2, 3, 32, 32)
    feats = _check_features(enc, x, depth=2, width=32, prefix=1)
    expected = source.visual.forward_intermediates(enc.normalize(x), indices=1, intermediates_only=True,
                                                   output_fmt="NLC")["image_intermediates"][-1]  # fmt: skip
    torch.testing.assert_close(feats.last, expected)
    with pytest.raises(ValueError, match="fixed grid"):
        enc(torch.rand(1, 3, 40, 40))


# ------------------------------------------------------------------------------------ transformers
def _hf_models():
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2Config,
        Dinov2Model,
        SiglipVisionConfig,
        SiglipVisionModel,
        ViTConfig,
        ViTModel,
    )

    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    return {
        "vit": (lambda: ViTModel(ViTConfig(**common), add_pooling_layer=False), 1),
        "dinov2": (lambda: Dinov2Model(Dinov2Config(**common)), 1),
        "siglip": (lambda: SiglipVisionModel(SiglipVisionConfig(**common)), 0),
        "clip": (lambda: CLIPVisionModel(CLIPVisionConfig(**common)), 1),
    }


@pytest.mark.parametrize("kind", ["vit", "dinov2", "siglip", "clip"])
def test_hf_local_directory_roundtrip(tmp_path, kind):
    from transformers import ViTImageProcessor

    make, prefix = _hf_models()[kind]
    source = make().eval()
    source.save_pretrained(tmp_path / kind)
    ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]).save_pretrained(tmp_path / kind)
    enc = build_encoder(EncoderConfig(backend="hf", name=str(tmp_path / kind), image_size=32)).eval()
    assert (enc.patch_size, enc.width, enc.depth) == (8, 32, 2)
    assert enc.mean == pytest.approx((0.1, 0.2, 0.3)) and enc.std == pytest.approx((0.4, 0.5, 0.6))
    x = torch.rand(2, 3, 32, 32)
    feats = _check_features(enc, x, depth=2, width=32, prefix=prefix)
    expected = source(pixel_values=enc.normalize(x), output_hidden_states=True).hidden_states[-1][:, prefix:]
    torch.testing.assert_close(feats.last, expected)


def test_hf_state_dict_checkpoint_is_loaded(tmp_path):
    make, _ = _hf_models()["vit"]
    source, other = make().eval(), make().eval()
    source.config.save_pretrained(tmp_path / "cfg")  # architecture only, no weights in the directory
    save_file(other.state_dict(), str(tmp_path / "w.safetensors"))
    enc = build_encoder(EncoderConfig(backend="hf", name=str(tmp_path / "cfg"),
                                      checkpoint=str(tmp_path / "w.safetensors"))).eval()  # fmt: skip
    x = torch.rand(1, 3, 32, 32)
    expected = other(pixel_values=enc.normalize(x), output_hidden_states=True).hidden_states[-1][:, 1:]
    torch.testing.assert_close(enc(enc.normalize(x)).last, expected)


def test_tokenizer_on_hf_encoder_saves_and_loads_without_the_original_directory(tmp_path, micro_decoder):
    import shutil

    from uniflow import UniFlowTokenizer

    make, _ = _hf_models()["dinov2"]
    make().save_pretrained(tmp_path / "enc")
    tok = UniFlowTokenizer.from_config(
        {
            "image_size": 32,
            "encoder": {"backend": "hf", "name": str(tmp_path / "enc"), "image_size": 32},
            "decoder": micro_decoder,
        },
    ).eval()
    tok.save_pretrained(tmp_path / "tok")
    shutil.rmtree(tmp_path / "enc")
    loaded = UniFlowTokenizer.from_pretrained(tmp_path / "tok")
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded.encode(x), tok.encode(x))


REMOTE_CONFIG = """
from transformers import PretrainedConfig


class TinyRemoteViTConfig(PretrainedConfig):
    model_type = "uniflow_tiny_remote_vit"

    def __init__(self, hidden_size=32, num_hidden_layers=2, patch_size=8, image_size=32, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.patch_size, self.image_size = patch_size, image_size
"""

REMOTE_MODEL = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_tiny import TinyRemoteViTConfig


class TinyRemoteViTModel(PreTrainedModel):
    """Shaped like InternViT: conv patch embedding, one class token, returns hidden_states per layer."""

    config_class = TinyRemoteViTConfig

    def __init__(self, config):
        super().__init__(config)
        d = config.hidden_size
        self.patch = nn.Conv2d(3, d, config.patch_size, config.patch_size)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, 2, 2 * d, batch_first=True) for _ in range(config.num_hidden_layers)
        )
        self.post_init()

    def forward(self, pixel_values, output_hidden_states=False, return_dict=True):
        x = self.patch(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        states = [x]
        for layer in self.layers:
            x = layer(x)
            states.append(x)
        return BaseModelOutput(last_hidden_state=x, hidden_states=tuple(states) if output_hidden_states else None)
'''


def _remote_repo(tmp_path: Path) -> Path:
    """A local transformers directory with its own modelling code (its layers keep torch's default
    dropout 0.1, in nn.Dropout modules and inside nn.MultiheadAttention)."""
    repo = tmp_path / "remote"
    repo.mkdir()
    (repo / "configuration_tiny.py").write_text(REMOTE_CONFIG)
    (repo / "modeling_tiny.py").write_text(REMOTE_MODEL)
    config = {"model_type": "uniflow_tiny_remote_vit", "hidden_size": 32, "num_hidden_layers": 2, "patch_size": 8,
              "image_size": 32, "architectures": ["TinyRemoteViTModel"],
              "auto_map": {"AutoConfig": "configuration_tiny.TinyRemoteViTConfig",
                           "AutoModel": "modeling_tiny.TinyRemoteViTModel"}}  # fmt: skip
    (repo / "config.json").write_text(json.dumps(config))
    return repo


def test_hf_remote_code_model_like_internvit(tmp_path):
    """The InternViT path: a local directory with its own modelling code, loaded with trust_remote_code."""
    from safetensors.torch import save_file as save

    repo = _remote_repo(tmp_path)
    cfg = EncoderConfig(backend="hf", name=str(repo), trust_remote_code=True, image_size=32)
    built = build_encoder(cfg).eval()  # architecture only: random weights from the remote code
    save({k: v.contiguous() for k, v in built.model.state_dict().items()}, str(repo / "model.safetensors"))
    loaded = build_encoder(cfg).eval()  # now through from_pretrained with the weights file
    x = torch.rand(2, 3, 32, 32)
    feats = _check_features(loaded, x, depth=2, width=32, prefix=1)
    torch.testing.assert_close(feats.last, built(built.normalize(x)).last)
    with pytest.raises(ValueError, match="trust_remote_code"):
        build_encoder(EncoderConfig(backend="hf", name=str(repo), image_size=32))


@pytest.mark.parametrize("backend", ["timm", "open_clip"])
def test_every_encoder_parameter_receives_gradient(backend, tmp_path):
    """No unused parameters: DDP without find_unused_parameters depends on it."""
    if backend == "timm":
        cfg = EncoderConfig(name="vit_tiny_patch16_224", image_size=28,
                            kwargs={"patch_size": 14, "embed_dim": 32, "depth": 2, "num_heads": 2, "class_token": False, "global_pool": "map"})  # fmt: skip
    else:
        import open_clip

        config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                                                  "head_width": 16},
                  "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}  # fmt: skip
        (tmp_path / "uniflow-grad-clip.json").write_text(json.dumps(config))
        open_clip.add_model_config(tmp_path)
        cfg = EncoderConfig(backend="open_clip", name="uniflow-grad-clip", image_size=32)
    enc = build_encoder(cfg)
    size = 28 if backend == "timm" else 32
    feats = enc(torch.rand(1, 3, size, size))
    sum(layer.sum() for layer in feats.layers).backward()
    unused = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not unused, unused


# ------------------------------------------------------------------------- no stochastic layers
def _stochastic_encoder_config(kind: str, tmp_path) -> EncoderConfig:
    """A small encoder of each backend whose own config asks for drop path, dropout or patch dropout."""
    if kind == "timm":
        rates = {"drop_path_rate": 0.1, "proj_drop_rate": 0.1, "attn_drop_rate": 0.1, "pos_drop_rate": 0.1,
                 "patch_drop_rate": 0.25}  # fmt: skip
        return EncoderConfig(image_size=32, kwargs={**TIMM_KWARGS, **rates})
    if kind == "hf_remote":
        return EncoderConfig(backend="hf", name=str(_remote_repo(tmp_path)), trust_remote_code=True, image_size=32,
                             mean=[0.5] * 3, std=[0.5] * 3)  # fmt: skip
    if kind == "open_clip":
        import open_clip

        config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8,
                                                  "head_width": 16, "patch_dropout": 0.5},
                  "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}  # fmt: skip
        (tmp_path / "uniflow-dropout-clip.json").write_text(json.dumps(config))
        open_clip.add_model_config(tmp_path)
        return EncoderConfig(backend="open_clip", name="uniflow-dropout-clip", image_size=32)
    from transformers import Dinov2Config, Dinov2Model

    # InternViT-300M-448px's hub config sets drop_path_rate 0.1; DINOv2's reads the same key.
    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "image_size": 32, "patch_size": 8, "drop_path_rate": 0.1, "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1}  # fmt: skip
    Dinov2Model(Dinov2Config(**common)).save_pretrained(tmp_path / "dinov2")
    return EncoderConfig(
        backend="hf", name=str(tmp_path / "dinov2"), image_size=32, mean=[0.5] * 3, std=[0.5] * 3
    )


@pytest.mark.parametrize("kind", ["timm", "open_clip", "hf", "hf_remote"])
def test_a_train_mode_encoder_computes_its_eval_mode_function(kind, tmp_path):
    """Drop path, dropout and patch dropout asked for by the encoder's config are off: the student
    (train mode) and its frozen teacher (eval mode) must agree exactly before any update."""
    enc = build_encoder(_stochastic_encoder_config(kind, tmp_path))
    x = torch.rand(4, 3, 32, 32)
    trained = enc.train()(x).layers
    reference = enc.eval()(x).layers
    assert len(trained) == enc.depth
    for a, b in zip(trained, reference, strict=True):
        assert torch.equal(a, b)
