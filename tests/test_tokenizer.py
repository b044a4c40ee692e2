import dataclasses

import pytest
import torch

from uniflow import UniFlowTokenizer, load_tokenizer
from uniflow.tokenizer.config import load_tokenizer_config
from uniflow.tokenizer.summary import parameter_counts


def test_training_losses_terms(tiny_tokenizer):
    out = tiny_tokenizer.training_losses(torch.rand(2, 3, 32, 32))
    depth = tiny_tokenizer.student.depth
    assert out["alpha"].shape == out["weight"].shape == (depth,)
    assert out["layers"] == list(range(1, depth + 1))
    assert out["weight"].sum().item() == pytest.approx(1.0)
    cfg = tiny_tokenizer.cfg
    expected = cfg.lambda_distill * out["distill"] + cfg.lambda_flow * out["flow"]
    torch.testing.assert_close(out["total"], expected)
    # The student starts as a copy of the teacher: every alpha is ~0.
    assert out["alpha"].abs().max() < 1e-5


def test_teacher_gets_no_gradient_while_student_and_decoder_do(tiny_tokenizer):
    tok = tiny_tokenizer.train()
    assert not tok.teacher.training
    opt = torch.optim.SGD([p for p in tok.parameters() if p.requires_grad], lr=0.5)
    # The zero-initialised head passes no gradient back to the latent at first (DiT-style zero init):
    # perturb it as training would, so the flow loss reaches the student and moves it off the teacher.
    with torch.no_grad():
        for p in tok.decoder.head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    teacher_before = {k: v.clone() for k, v in tok.teacher.state_dict().items()}
    for _ in range(2):
        opt.zero_grad()
        out = tok.training_losses(torch.rand(2, 3, 32, 32))
        out["total"].backward()
        opt.step()
    # The student moved off the teacher (by too little for alpha to leave 0 in float32 here); the teacher did not move.
    student, teacher = tok.student.state_dict(), tok.teacher.state_dict()
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)
    assert all(torch.equal(teacher[k], v) for k, v in teacher_before.items())
    assert all(p.grad is None for p in tok.teacher.parameters())
    assert all(not p.requires_grad for p in tok.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tok.student.parameters())
    assert all(p.grad is not None for p in tok.latent.parameters())
    assert all(p.grad is not None for p in tok.decoder.parameters())


def test_distillation_gradient_reaches_the_student_through_alpha(tiny_tokenizer):
    tok = tiny_tokenizer
    with torch.no_grad():
        for p in tok.student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = tok.training_losses(torch.rand(2, 3, 32, 32))
    out["distill"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tok.student.parameters())
    assert all(p.grad is None for p in tok.decoder.parameters())


def test_api_shapes_and_ranges(tiny_tokenizer):
    tok = tiny_tokenizer.eval()
    x = torch.rand(3, 3, 32, 32)
    z = tok.encode(x)
    assert z.shape == (3, tok.cfg.decoder.latent_dim, 4, 4)
    y = tok.decode(z, steps=1)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    tokens = tok.semantic_tokens(x)
    assert tokens.shape == (3, 16, tok.student.width)
    assert tok.image_size == 32 and tok.patch_size == 8


@pytest.mark.parametrize("size", [(64, 64), (60, 70), (17, 9)])
def test_padding_and_cropping_preserve_the_image_size(tiny_tokenizer, size):
    x = torch.rand(1, 3, *size)
    padded = tiny_tokenizer.pad(x)
    assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    torch.testing.assert_close(tiny_tokenizer.crop(padded, size), x)
    assert tiny_tokenizer.reconstruct(x).shape == x.shape


def test_patch14_pads_256_to_a_multiple(micro_decoder):
    tok = UniFlowTokenizer.from_config(
        {
            "image_size": 256,
            "encoder": {
                "kwargs": {"patch_size": 14, "embed_dim": 32, "depth": 1, "num_heads": 2},
                "image_size": 224,
            },
            "decoder": micro_decoder,
        },
        for_training=False,
    )
    assert tok.padded_size(256, 256) == (266, 266)
    x = torch.rand(1, 3, 256, 256)
    assert tok.encode(x).shape[-2:] == (19, 19)
    assert tok.reconstruct(x).shape == x.shape


def test_save_load_roundtrip_is_bit_exact(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer.eval()
    with torch.no_grad():  # make the zero-initialised parts non-trivial
        for p in tok.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    tok.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.teacher is None
    ref, new = tok.state_dict(), loaded.state_dict()
    assert set(new) == {k for k in ref if not k.startswith("teacher.")}
    for key, value in new.items():
        assert torch.equal(value, ref[key]), key
    x = torch.rand(2, 3, 32, 32)
    noise = torch.randn(2, 16, 192)
    assert torch.equal(tok.encode(x), loaded.encode(x))
    assert torch.equal(tok.decode(tok.encode(x), noise=noise), loaded.decode(loaded.encode(x), noise=noise))
    assert not list(tmp_path.joinpath("tok").glob(".*"))  # no temporary files left behind


def test_from_pretrained_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "config.yaml")):
        UniFlowTokenizer.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(3, 64, 64), "rank 4"),
        (torch.rand(1, 1, 64, 64), "3 channels"),
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), "floating dtype"),
        (torch.rand(1, 3, 64, 64) * 255, r"values in \[0, 1\]"),
        (torch.rand(1, 3, 64, 64) - 0.5, r"values in \[0, 1\]"),
        (torch.rand(0, 3, 64, 64), "non-empty batch"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_images_raise_value_error_naming_the_problem(tiny_tokenizer, images, message):
    for call in (tiny_tokenizer.encode, tiny_tokenizer.training_losses, tiny_tokenizer.semantic_tokens):
        with pytest.raises(ValueError, match=message):
            call(images)


def test_bad_latent_raises(tiny_tokenizer):
    with pytest.raises(ValueError, match="latent"):
        tiny_tokenizer.decode(torch.rand(1, 5, 8, 8))


def test_no_distillation_builds_no_teacher(tiny_config_path):
    tok = UniFlowTokenizer.from_config(tiny_config_path, ["tokenizer.distill.mode=none"])
    assert tok.teacher is None
    out = tok.training_losses(torch.rand(1, 3, 64, 64))
    assert out["distill"].item() == 0 and "alpha" not in out


def test_released_layout_decoder_parameter_count_on_meta_device(tiny_config_path):
    cfg = load_tokenizer_config(tiny_config_path.parent / "internvit300m.yaml")
    # InternViT-300M's config lives on the hub; its width (1024) and patch (14) are what the decoder needs.
    counts = parameter_counts(cfg, encoder_width=1024, patch_size=14)
    assert counts["encoder"] is None
    assert counts["decoder_total"] < 150e6  # the paper: "under 150M"
    # Ours, as the README's table gives them: latent projection + up projection + GTB (both position
    # embeddings, no final LayerNorm: the released layout) + flow head.
    parts = ("latent_projection", "up_projection", "gtb", "flow_head")
    assert [counts[k] for k in parts] == [1_115_200, 1_116_160, 77_674_496, 68_643_404]
    assert counts["decoder_total"] == sum(counts[k] for k in parts) == 148_549_260
    # The plain ViT-stack layout: one position embedding (32 x 32 x 1024) fewer, one LayerNorm more.
    plain = dataclasses.replace(
        cfg, decoder=dataclasses.replace(cfg.decoder, post_gtb_pos_embed=False, gtb_final_norm=True)
    )
    assert parameter_counts(plain, 1024, 14)["gtb"] == 77_674_496 - 32 * 32 * 1024 + 2 * 1024


def test_lpips_term_without_local_vgg_weights_names_the_paths(tiny_config_path, tmp_path):
    missing = tmp_path / "vgg16.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        UniFlowTokenizer.from_config(
            tiny_config_path, ["tokenizer.lambda_lpips=0.1", f"tokenizer.lpips_weights={missing}"]
        )


@pytest.mark.slow
def test_lpips_term_from_a_local_vgg_file(tiny_config_path, tmp_path):
    from torchvision.models import vgg16

    weights = tmp_path / "vgg16-397923af.pth"  # random VGG16: the plumbing, not the perceptual quality
    torch.save(vgg16().state_dict(), weights)
    tok = UniFlowTokenizer.from_config(
        tiny_config_path, ["tokenizer.lambda_lpips=0.5", f"tokenizer.lpips_weights={weights}"]
    )
    out = tok.training_losses(torch.rand(2, 3, 64, 64))
    expected = out["distill"] + out["flow"] + 0.5 * out["lpips"]
    torch.testing.assert_close(out["total"], expected)
    out["total"].backward()
    assert all(p.grad is None for p in tok.perceptual.parameters())
    tok.save_pretrained(tmp_path / "tok")
    assert UniFlowTokenizer.from_pretrained(tmp_path / "tok").perceptual is None


def test_params_command_counts_the_decoder_alone_when_the_encoder_is_hub_only(tiny_config_path, capsys):
    import json

    from uniflow.__main__ import main

    internvit = str(tiny_config_path.parent / "internvit300m.yaml")
    assert main(["params", internvit]) == 2  # the architecture is hub remote code: not buildable offline
    assert "--encoder-width and --patch-size" in capsys.readouterr().err
    assert main(["params", internvit, "--encoder-width", "1024", "--patch-size", "14"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["encoder"] is None and counts["decoder_total"] == 148_549_260


def test_alpha_is_zero_at_initialisation_in_train_mode_even_if_the_encoder_asks_for_drop_path(
    tiny_config_path,
):
    tok = UniFlowTokenizer.from_config(
        tiny_config_path,
        ["tokenizer.encoder.kwargs.drop_path_rate=0.1", "tokenizer.encoder.kwargs.proj_drop_rate=0.1",
         "tokenizer.encoder.kwargs.attn_drop_rate=0.1"],
    ).train()  # fmt: skip
    assert tok.student.training and not tok.teacher.training
    out = tok.training_losses(torch.rand(4, 3, 64, 64))
    assert out["alpha"].shape == (6,)
    assert out["alpha"].abs().max() < 1e-6  # with DropPath 0.1 in the student alone it is ~1e-2


def test_padding_is_mid_grey_and_every_evaluation_number_records_it(tiny_tokenizer, tmp_path):
    from uniflow.evaluation.config import EvalConfig
    from uniflow.evaluation.context import EvalContext

    padded = tiny_tokenizer.pad(torch.zeros(1, 3, 60, 70))  # stride 8 -> 64 x 72, centred
    assert padded.shape == (1, 3, 64, 72)
    inside = torch.zeros_like(padded, dtype=torch.bool)
    inside[..., 2:62, 1:71] = True
    assert torch.all(padded[inside] == 0) and torch.all(padded[~inside] == 0.5)
    ctx = EvalContext(EvalConfig(), tiny_tokenizer, tmp_path, "0" * 64, torch.device("cpu"), tmp_path)
    assert ctx.provenance()["padding"] == tiny_tokenizer.padding_policy
    assert (
        "multiple of 8 px" in tiny_tokenizer.padding_policy
        and "mid-grey 0.5" in tiny_tokenizer.padding_policy
    )
