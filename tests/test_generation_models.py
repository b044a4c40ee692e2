"""Fast contracts of the latent generators: guidance, time shift, samplers, latent statistics, MAR and AR
sampling, FlowDiT's initialisation and named sizes. Tiny widths: each test well under 2 s on one CPU thread."""

import math

import pytest
import torch
from torch import nn

from uniflow import flow
from uniflow.generation import (
    ARFLOW_SIZES,
    FLOWDIT_SIZES,
    ARFlow,
    FlowDiT,
    LatentNormalizer,
    generation_masks,
    unmasking_schedule,
)
from uniflow.generation.ar import truncated_normal
from uniflow.nn import Attention, LayerKVCache, apply_rope, rope_2d_table


def tiny_dit(**kwargs) -> FlowDiT:
    defaults = dict(in_channels=4, input_size=4, num_classes=3, depth=2, width=32, heads=2)
    return FlowDiT(**{**defaults, **kwargs})


def tiny_ar(order: str, **kwargs) -> ARFlow:
    defaults = dict(
        in_channels=3, input_size=(2, 3), num_classes=3, order=order, depth=2, width=32, heads=4,
        num_prefix=2, head_depth=2, head_width=32,
    )  # fmt: skip
    return ARFlow(**{**defaults, **kwargs})


def randomize_zero_inits(model: torch.nn.Module) -> None:
    # adaLN-zero and the flow head start at zero; tests of sampling need a model that says something.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 0 and not p.any():
                p.normal_(0.0, 0.3)


# -- guidance -------------------------------------------------------------------------------------


def test_guidance_scale_one_is_the_conditional_model():
    model = tiny_dit()
    randomize_zero_inits(model)
    labels = torch.tensor([0, 2])
    noise = torch.randn(2, 4, 4, 4)
    out = model.sample(labels, steps=3, cfg_scale=1.0, noise=noise)
    reference = flow.sample(lambda x, t: model(x, t, labels), noise, 3, shift=model.shift)
    torch.testing.assert_close(out, reference)
    null = torch.full_like(labels, model.null_class)
    guided = model.sample(labels, steps=3, cfg_scale=2.0, noise=noise)
    assert not torch.allclose(guided, out)
    uncond = flow.sample(lambda x, t: model(x, t, null), noise, 3, shift=model.shift)
    assert not torch.allclose(guided, uncond)


def test_guidance_acts_on_every_channel():
    cond = lambda x, t: torch.ones_like(x)  # noqa: E731
    uncond = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x = torch.randn(2, 8, 3, 3)  # 8 channels: more than the 3 that LightningDiT's code guides
    out = flow.classifier_free_guidance(cond, uncond, 4.0)(x, torch.full((2,), 0.5))
    torch.testing.assert_close(out, torch.full_like(x, 4.0))


def test_guidance_is_off_outside_its_interval():
    calls = []

    def uncond(x, t):
        calls.append(t)
        return torch.zeros_like(x)

    cond = lambda x, t: torch.ones_like(x)  # noqa: E731
    guided = flow.classifier_free_guidance(cond, uncond, 3.0, interval=(0.2, 0.6))
    x = torch.zeros(4, 5, 2, 2)
    out = guided(x, torch.tensor([0.1, 0.2, 0.6, 0.9]))
    expected = torch.tensor([1.0, 3.0, 3.0, 1.0]).reshape(4, 1, 1, 1).expand_as(x)
    torch.testing.assert_close(out, expected)
    # No sample inside the interval: the unconditional model is not evaluated at all.
    calls.clear()
    torch.testing.assert_close(guided(x, torch.full((4,), 0.95)), torch.ones_like(x))
    assert calls == []
    with pytest.raises(ValueError, match="interval"):
        flow.classifier_free_guidance(cond, uncond, 1.0, interval=(0.7, 0.3))


# -- time shift and samplers ----------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.5, 1.0, 2.0, 6.9])
def test_time_shift_both_directions(shift):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    shifted = flow.time_shift(t, shift)
    torch.testing.assert_close(flow.inverse_time_shift(shifted, shift), t)
    torch.testing.assert_close(flow.time_shift(flow.inverse_time_shift(t, shift), shift), t)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert (shifted.diff() > 0).all()
    if shift > 1:  # toward noise (t = 1)
        assert (shifted[1:-1] > t[1:-1]).all()
    if shift == 1.0:
        torch.testing.assert_close(shifted, t)
    with pytest.raises(ValueError, match="positive"):
        flow.time_shift(t, 0.0)


def test_shift_for_latent_and_shifted_grids():
    assert flow.shift_for_latent(16, 16, 16) == 1.0
    assert flow.shift_for_latent(16, 16, 64) == 2.0
    assert flow.shift_for_latent(32, 32, 64) == 4.0
    assert flow.shift_for_latent(16, 16, 768) == pytest.approx(6.93, abs=0.01)
    grid = flow.time_grid(10, shift=3.0)
    assert grid[0] == 1 and grid[-1] == 0 and (grid.diff() < 0).all()
    torch.testing.assert_close(grid, flow.time_shift(flow.time_grid(10), 3.0))
    torch.testing.assert_close(flow.time_grid(7, shift=1.0), torch.linspace(1, 0, 8))
    g = torch.Generator().manual_seed(0)
    plain = flow.sample_time(4096, generator=g)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(flow.sample_time(4096, generator=g, shift=2.0), flow.time_shift(plain, 2.0))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_one_euler_step_is_one_velocity_step(shift):
    x, v = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    out = flow.sample(lambda x_t, t: v, x, steps=1, sampler="euler", shift=shift)
    torch.testing.assert_close(out, x - v)


# -- latent statistics ----------------------------------------------------------------------------


def test_latent_normalizer_streaming_round_trip(tmp_path):
    z = torch.randn(20, 5, 3, 3) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5]).reshape(1, 5, 1, 1) + 7.0
    # Two "ranks" see different batches; adding their float64 sums is what all_reduce does.
    a, b = LatentNormalizer(5), LatentNormalizer(5)
    for chunk in z[:7].split(3):
        a.update(chunk)
    b.update(z[7:])
    for name in ("count", "sum", "sum_sq"):
        getattr(a, name).add_(getattr(b, name))
    a.all_reduce()  # no process group: a no-op
    a.finalize()
    flat = z.double().transpose(0, 1).reshape(5, -1)
    torch.testing.assert_close(a.mean.flatten().double(), flat.mean(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.std.flatten().double(), flat.std(1, correction=0), rtol=1e-6, atol=1e-6)
    normed = a.normalize(z)
    assert (
        normed.mean().abs() < 1e-5 and (normed.transpose(0, 1).reshape(5, -1).std(1) - 1).abs().max() < 0.05
    )
    torch.testing.assert_close(a.denormalize(normed), z, rtol=0, atol=1e-5)

    a.save(tmp_path / "stats.safetensors")
    loaded = LatentNormalizer.load(tmp_path / "stats.safetensors")
    torch.testing.assert_close(loaded.mean, a.mean, rtol=0, atol=0)
    torch.testing.assert_close(loaded.std, a.std, rtol=0, atol=0)
    assert loaded.mean.shape == (1, 5, 1, 1)
    torch.testing.assert_close(loaded.denormalize(a.normalize(z)), z, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="B x 5"):
        loaded.normalize(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="update"):
        LatentNormalizer(2).finalize()


# -- MAR and raster AR ----------------------------------------------------------------------------


@pytest.mark.parametrize(("tokens", "iterations"), [(256, 64), (256, 256), (6, 1), (6, 6), (10, 4)])
def test_mar_schedule_generates_every_token_exactly_once(tokens, iterations):
    schedule = unmasking_schedule(tokens, iterations)
    assert len(schedule) == iterations and schedule[-1] == 0
    assert all(later < earlier for earlier, later in zip([tokens, *schedule], schedule))
    order = torch.stack([torch.randperm(tokens) for _ in range(3)])
    masks = torch.stack(list(generation_masks(order, schedule)))
    torch.testing.assert_close(masks.sum(0), torch.ones(3, tokens, dtype=torch.long))
    # The first steps generate the first positions of each sample's order.
    first = masks[0]
    assert all(first[b, order[b, : tokens - schedule[0]]].all() for b in range(3))
    if iterations > 1:  # cosine: few tokens first, many at the end
        assert tokens - schedule[0] <= schedule[-2]
    with pytest.raises(ValueError, match="iterations"):
        unmasking_schedule(tokens, tokens + 1)


def test_mask_ratio_truncated_normal():
    g = torch.Generator().manual_seed(0)
    r = truncated_normal(20000, 1.0, 0.25, 0.7, 1.0, generator=g)
    assert r.min() >= 0.7 and r.max() <= 1.0
    # P(r > 0.85) of N(1, 0.25) restricted to [0.7, 1]: (Phi(0) - Phi(-0.6)) / (Phi(0) - Phi(-1.2)).
    phi = lambda x: torch.special.ndtr(torch.tensor(x)).item()  # noqa: E731
    expected = (0.5 - phi(-0.6)) / (0.5 - phi(-1.2))
    assert (r > 0.85).float().mean().item() == pytest.approx(expected, abs=0.015)


def test_mar_sampling_fills_every_token():
    model = tiny_ar("random")
    randomize_zero_inits(model)
    g = torch.Generator().manual_seed(0)
    out = model.sample(torch.tensor([0, 1]), iterations=4, head_steps=2, cfg_scale=2.0, generator=g)
    assert out.shape == (2, 3, 2, 3) and torch.isfinite(out).all()
    loss = model.training_loss(torch.randn(2, 3, 2, 3), torch.tensor([0, 2]))
    loss.backward()
    assert model.mask_token.grad is not None and model.head.final.linear.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_raster_sampling_with_kv_cache_equals_full_recompute(cfg_scale):
    model = tiny_ar("raster").double()
    randomize_zero_inits(model)
    labels = torch.tensor([0, 2, 1])
    kwargs = dict(head_steps=3, sampler="heun", cfg_scale=cfg_scale, temperature=0.9)
    cached = model.sample(labels, generator=torch.Generator().manual_seed(1), kv_cache=True, **kwargs)
    full = model.sample(labels, generator=torch.Generator().manual_seed(1), kv_cache=False, **kwargs)
    assert cached.dtype == torch.float64 and cached.shape == (3, 3, 2, 3)
    torch.testing.assert_close(cached, full, rtol=1e-10, atol=1e-10)


def test_raster_training_never_sees_the_token_it_predicts():
    model = tiny_ar("raster", class_dropout=0.0).double()
    randomize_zero_inits(model)
    z = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    from uniflow.tokenizer.decoder import patchify

    tokens = patchify(z, 1)
    prefix = model._prefix(torch.tensor([1]))
    out = model._trunk(torch.cat([prefix, model._shifted_slots(tokens)], dim=1), causal=True)
    # The condition of token 3 may depend on tokens 0..2 only.
    (grad,) = torch.autograd.grad(out[0, model.num_prefix + 3].sum(), tokens)
    assert grad[0, :3].abs().sum() > 0 and grad[0, 3:].abs().sum() == 0


def test_attention_cache_in_chunks_equals_one_causal_pass():
    torch.manual_seed(0)
    attn = Attention(16, 4, qk_norm=True).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    full = attn(x, causal=True)
    cache = LayerKVCache()
    parts = [attn(chunk, causal=True, cache=cache) for chunk in x.split([3, 1, 3], dim=1)]
    assert cache.length == 7
    torch.testing.assert_close(torch.cat(parts, dim=1), full)


def test_rope_depends_only_on_offsets():
    table = rope_2d_table(8, 4, 5).double()
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    rq, rk = apply_rope(q.expand(20, 8), table), apply_rope(k.expand(20, 8), table)
    # Position (row, col) is index row * 5 + col. Same offset (1, 2) at two places, same score.
    score = lambda a, b: (rq[a] * rk[b]).sum()  # noqa: E731
    torch.testing.assert_close(score(0 * 5 + 0, 1 * 5 + 2), score(2 * 5 + 1, 3 * 5 + 3))
    assert not torch.isclose(score(0, 7), score(0, 8))
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(20))  # rotations keep the norm


def test_rope_gradient():
    table = rope_2d_table(8, 2, 3).double()
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: apply_rope(x, table), (x,))
    assert torch.autograd.gradgradcheck(lambda x: apply_rope(x, table), (x,))


def test_rope_is_the_complex_rotation_of_each_pair():
    """Pair (x_i, x_{i + d/2}) as x_i + i x_{i + d/2}, times e^{i angle}: the RoFormer rotation."""
    from uniflow.nn.rope import rope_2d_angles

    x = torch.randn(2, 3, 12, 8, dtype=torch.float64)
    angles = rope_2d_angles(8, 3, 4)
    a, b = x.chunk(2, dim=-1)
    rotated = torch.complex(a, b) * torch.polar(torch.ones_like(angles), angles)
    expected = torch.cat([rotated.real, rotated.imag], dim=-1)
    torch.testing.assert_close(apply_rope(x, rope_2d_table(8, 3, 4).double()), expected)
    # a non-contiguous view (queries and keys sliced out of one projection) rotates the same
    qkv = torch.randn(3, 2, 12, 3, 8, dtype=torch.float64).permute(0, 1, 3, 2, 4)
    table = rope_2d_table(8, 3, 4).double()
    torch.testing.assert_close(apply_rope(qkv[:2], table), apply_rope(qkv[:2].contiguous(), table))


@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_matches_torch(affine):
    """The fused-reduction RMSNorm gives nn.RMSNorm's values and gradients, and its dtype under autocast."""
    from uniflow.nn.dit_blocks import RMSNorm

    ours, theirs = (
        RMSNorm(16, eps=1e-6, elementwise_affine=affine),
        nn.RMSNorm(16, eps=1e-6, elementwise_affine=affine),
    )
    if affine:
        with torch.no_grad():
            theirs.weight.normal_()
            ours.weight.copy_(theirs.weight)
    x = torch.randn(3, 5, 16, requires_grad=True)
    torch.testing.assert_close(ours(x), theirs(x))
    grads = [torch.autograd.grad(m(x).square().sum(), [x, *m.parameters()]) for m in (ours, theirs)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x.bfloat16()).dtype == theirs(x.bfloat16()).dtype == torch.bfloat16
    # the closed-form gradient against finite differences
    ours = ours.double()
    x = x.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(ours, (x,))


@pytest.mark.parametrize("keys", [16, 300])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_kernel_choice_keeps_values_and_gradients(keys, causal, monkeypatch):
    """Short bf16 training attention takes the unfused kernel, long the fused one; both are SDPA's function."""
    from torch.nn.attention import SDPBackend

    from uniflow.nn import dit_blocks

    chosen: list[object] = []
    real_kernel = dit_blocks.sdpa_kernel
    monkeypatch.setattr(
        dit_blocks, "sdpa_kernel", lambda backend: chosen.append(backend) or real_kernel(backend)
    )
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, keys, 8, generator=gen) for _ in range(3))
    grad_out = torch.randn(2, 3, keys, 8, generator=gen)

    def run(fn, dtype):
        inputs = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        out = fn(*inputs, is_causal=causal)
        return [out.float(), *(g.float() for g in torch.autograd.grad(out, inputs, grad_out.to(dtype)))]

    ours = run(dit_blocks.attention, torch.bfloat16)
    assert chosen == ([SDPBackend.MATH] if keys < dit_blocks.CPU_FUSED_MIN_KEYS else [])
    reference = run(torch.nn.functional.scaled_dot_product_attention, torch.float32)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, atol=3e-2, rtol=3e-2)
    with torch.no_grad():  # sampling keeps the fused kernel (faster forward at every length)
        dit_blocks.attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert len(chosen) == (1 if keys < dit_blocks.CPU_FUSED_MIN_KEYS else 0)


# -- FlowDiT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", [False, True])
def test_flowdit_adaln_zero_output_is_zero_at_init(head):
    kwargs = dict(head_depth=1, head_width=48, head_heads=4) if head else {}
    model = tiny_dit(patch_size=2, **kwargs)
    out = model(torch.randn(3, 4, 4, 4), torch.rand(3), torch.tensor([0, 1, 3]))
    assert out.shape == (3, 4, 4, 4)
    assert out.abs().max() == 0
    loss = model.training_loss(torch.randn(3, 4, 4, 4), torch.tensor([0, 1, 2]))
    loss.backward()
    assert model.final.linear.weight.grad.abs().sum() > 0


def test_flowdit_training_loss_uses_the_latent_shift():
    assert tiny_dit(in_channels=1024).shift == flow.shift_for_latent(4, 4, 1024) == 2.0
    assert tiny_dit().shift == 1.0  # the rule gives 0.125 here; it never shifts toward the data by default
    assert tiny_dit(shift=0.5).shift == 0.5
    with pytest.raises(ValueError, match="latents B x 4 x 4 x 4"):
        tiny_dit().training_loss(torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one label per latent"):
        tiny_dit().training_loss(torch.randn(2, 4, 4, 4), torch.tensor([0]))


@pytest.mark.parametrize("cls", [FlowDiT, ARFlow])
def test_label_dropout(cls):
    model = tiny_dit(class_dropout=0.5) if cls is FlowDiT else tiny_ar("random", class_dropout=0.5)
    labels = torch.randint(0, 3, (4000,))
    dropped = model.drop_labels(labels, torch.Generator().manual_seed(0))
    is_null = dropped == model.null_class
    assert abs(is_null.float().mean().item() - 0.5) < 0.03
    assert (dropped[~is_null] == labels[~is_null]).all()
    model.class_dropout = 0.0
    assert torch.equal(model.drop_labels(labels), labels)


def test_named_sizes_table():
    expected = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    for name, (depth, width, heads) in expected.items():
        for variant in (name, f"{name}-DH"):
            size = FLOWDIT_SIZES[variant]
            assert (size.depth, size.width, size.heads) == (depth, width, heads)
            assert (size.head_depth > 0) == variant.endswith("-DH")
    assert set(FLOWDIT_SIZES) == {*expected, *(f"{n}-DH" for n in expected)}
    with pytest.raises(ValueError, match="unknown FlowDiT size"):
        FlowDiT.from_name("XXL", in_channels=4, input_size=8, num_classes=10)


@pytest.mark.parametrize("name", sorted(FLOWDIT_SIZES))
def test_named_flowdit_builds_on_meta(name):
    size = FLOWDIT_SIZES[name]
    with torch.device("meta"):
        model = FlowDiT.from_name(name, in_channels=32, input_size=16, num_classes=1000)
        out = model(torch.randn(2, 32, 16, 16), torch.rand(2), torch.tensor([1, 1000]))
    assert out.shape == (2, 32, 16, 16)
    assert len(model.blocks) == size.depth and model.blocks[0].attn.heads == size.heads
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    # adaLN (6 w^2) + qkv/proj (4 w^2) + SwiGLU (3 * w * 8w/3 = 8 w^2): 18 w^2 plus biases and norms.
    assert per_block == pytest.approx(18 * size.width**2, rel=0.01)
    if size.head_depth:
        assert len(model.head_blocks) == size.head_depth and model.final.linear.in_features == size.head_width


@pytest.mark.parametrize(("name", "millions"), [("S", 33), ("B", 130), ("L", 458), ("XL", 675)])
def test_flowdit_parameter_counts_match_dit(name, millions):
    # DiT's published counts are for patch 2 on 32 x 32 x 4 latents. SwiGLU at 2/3 of the hidden width
    # costs what the GELU MLP costs, so the counts agree although the blocks differ.
    with torch.device("meta"):
        model = FlowDiT.from_name(name, in_channels=4, input_size=32, num_classes=1000, patch_size=2)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, rel=0.02)


@pytest.mark.parametrize("name", sorted(ARFLOW_SIZES))
def test_named_arflow_builds_on_meta(name):
    with torch.device("meta"):
        model = ARFlow.from_name(name, in_channels=16, input_size=16, num_classes=1000)
    size = ARFLOW_SIZES[name]
    assert len(model.blocks) == size.depth and model.pos.shape == (256, size.width)
    assert len(model.head.blocks) == size.head_depth
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert math.isfinite(millions) and millions > 100
