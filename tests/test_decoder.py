import torch

from uniflow.tokenizer.config import DecoderConfig, FlowConfig
from uniflow.tokenizer.decoder import PatchFlowHead, PixelFlowDecoder, patchify, unpatchify
from uniflow.tokenizer.latent import LatentProjection


def _trained_like_head():
    head = PatchFlowHead(patch_dim=12, cond_dim=8, width=16, depth=2)
    # Zero-initialised modulation would make the test trivial: perturb every weight.
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return head


def test_patchify_roundtrip_and_layout():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    torch.testing.assert_close(unpatchify(p, (2, 3), 4), x)
    # Patch (row 0, col 1) holds pixels x[:, :, 0:4, 4:8] in (row, col, channel) order.
    torch.testing.assert_close(p[:, 1].reshape(2, 4, 4, 3), x[:, :, 0:4, 4:8].permute(0, 2, 3, 1))


def test_flow_head_treats_patches_independently():
    head = _trained_like_head().eval()
    rows, cond, t = torch.randn(5, 12), torch.randn(5, 8), torch.rand(5)
    reference = head(rows, t, cond)
    other = rows.clone()
    other[1:] = torch.randn(4, 12)  # change every other patch's noisy input and time
    t_other = t.clone()
    t_other[1:] = torch.rand(4)
    changed = head(other, t_other, cond)
    torch.testing.assert_close(changed[0], reference[0])
    assert not torch.allclose(changed[1:], reference[1:])


def test_head_starts_at_zero_velocity():
    head = PatchFlowHead(patch_dim=12, cond_dim=8, width=16, depth=2)
    assert head(torch.randn(3, 12), torch.rand(3), torch.randn(3, 8)).abs().max() == 0


def test_decoder_sample_is_deterministic_given_noise_and_patchwise():
    cfg = DecoderConfig(latent_dim=4, width=32, gtb_depth=1, gtb_heads=2, head_depth=2, head_width=16)
    dec = PixelFlowDecoder(cfg, FlowConfig(), patch_size=2, grid=(3, 3)).eval()
    with torch.no_grad():
        for p in dec.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    z = torch.randn(1, 4, 3, 3)
    noise = torch.randn(1, 9, 12)
    a = dec.sample(z, steps=2, noise=noise)
    assert a.shape == (1, 3, 6, 6)
    torch.testing.assert_close(dec.sample(z, steps=2, noise=noise), a)
    # Changing the noise of patch 0 only changes patch 0's pixels.
    noise2 = noise.clone()
    noise2[:, 0] = torch.randn(12)
    b = dec.sample(z, steps=2, noise=noise2)
    torch.testing.assert_close(b[..., 2:, :], a[..., 2:, :])
    torch.testing.assert_close(b[..., :2, 2:], a[..., :2, 2:])
    assert not torch.allclose(b[..., :2, :2], a[..., :2, :2])


def test_token_merge_quarters_the_tokens_and_restores_the_grid():
    proj = LatentProjection(encoder_width=8, latent_dim=4, token_merge=True)
    z = proj(torch.randn(2, 16, 8), (4, 4))
    assert z.shape == (2, 4, 2, 2)
    cfg = DecoderConfig(
        latent_dim=4, token_merge=True, width=16, gtb_depth=1, gtb_heads=2, head_depth=1, head_width=8
    )
    dec = PixelFlowDecoder(cfg, FlowConfig(), patch_size=2, grid=(4, 4))
    cond, grid = dec.conditions(z)
    assert grid == (4, 4) and cond.shape == (2, 16, 16)


def test_position_embedding_interpolates_to_other_grids():
    cfg = DecoderConfig(latent_dim=4, width=32, gtb_depth=1, gtb_heads=2, head_depth=1, head_width=8)
    dec = PixelFlowDecoder(cfg, FlowConfig(), patch_size=2, grid=(4, 4))
    cond, grid = dec.conditions(torch.randn(1, 4, 5, 3))
    assert grid == (5, 3) and cond.shape == (1, 15, 32)


def _perturbed_decoder(**layout) -> PixelFlowDecoder:
    cfg = DecoderConfig(
        latent_dim=4, width=32, gtb_depth=1, gtb_heads=2, head_depth=2, head_width=16, **layout
    )
    dec = PixelFlowDecoder(cfg, FlowConfig(), patch_size=2, grid=(3, 3)).eval()
    with torch.no_grad():
        for p in dec.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return dec


def test_sampler_state_stays_float32_under_any_precision():
    """A seeded decode is the same under fp32, bf16 autocast and bf16 weights: the ODE state and its
    updates stay float32; only the head's arithmetic is rounded."""
    dec = _perturbed_decoder()
    z, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 9, 12)
    reference = dec.sample(z, steps=4, noise=noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dec.conditions(z)[0].dtype == torch.bfloat16  # what the state used to follow
        mixed = dec.sample(z, steps=4, noise=noise)
    pure_bf16 = dec.to(torch.bfloat16).sample(z.bfloat16(), steps=4, noise=noise)
    assert reference.dtype == mixed.dtype == pure_bf16.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, atol=0.05, rtol=0)
    torch.testing.assert_close(pure_bf16, reference, atol=0.1, rtol=0)


def test_decoder_layouts_released_and_plain():
    """Released layout: a second position embedding on the GTB output and no final LayerNorm."""
    released = _perturbed_decoder()
    assert released.gtb.output_pos_embed is not None and isinstance(released.gtb.norm, torch.nn.Identity)
    plain = _perturbed_decoder(post_gtb_pos_embed=False, gtb_final_norm=True)
    assert plain.gtb.output_pos_embed is None and isinstance(plain.gtb.norm, torch.nn.LayerNorm)
    z = torch.randn(1, 4, 3, 3)
    # The second embedding is added after the blocks: changing it moves the conditions by exactly that.
    before = released.conditions(z)[0]
    with torch.no_grad():
        released.gtb.output_pos_embed.add_(1.0)
    torch.testing.assert_close(released.conditions(z)[0], before + 1.0)
    # Without the final norm the conditions are not normalised per token; with it they are.
    plain_cond = plain.conditions(z)[0]
    torch.testing.assert_close(plain_cond.mean(-1), torch.zeros(1, 9), atol=1e-5, rtol=0)
