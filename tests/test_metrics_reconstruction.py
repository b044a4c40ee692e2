"""PSNR / SSIM / LPIPS: agreement with scikit-image on real photos, streaming means, honest n/a."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from uniflow.metrics import ReconstructionMetrics, psnr, ssim
from uniflow.metrics import reconstruction as rec


def _photo_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Real photos (96 x 128 crops) and degraded versions: noise, blur-like averaging, a brightness shift."""
    rng = np.random.default_rng(0)
    photos = np.stack(
        [p[100:196, 100:228] for p in (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())]
    )
    degraded = photos.astype(np.float64)
    degraded[0] += rng.normal(0, 10, degraded[0].shape)
    degraded[1] = (degraded[1] + np.roll(degraded[1], 1, axis=0) + np.roll(degraded[1], 1, axis=1)) / 3
    degraded[2] += 7
    degraded[3] += rng.normal(0, 30, degraded[3].shape)
    return photos, np.clip(degraded.round(), 0, 255).astype(np.uint8)


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def test_psnr_and_ssim_agree_with_scikit_image():
    originals, recons = _photo_pairs()
    ours_psnr = psnr(_nchw(originals), _nchw(recons))
    ours_ssim = ssim(_nchw(originals), _nchw(recons))
    for i in range(len(originals)):
        ref_psnr = peak_signal_noise_ratio(originals[i], recons[i], data_range=255)
        ref_ssim = structural_similarity(
            originals[i],
            recons[i],
            channel_axis=-1,
            data_range=255,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert float(ours_psnr[i]) == pytest.approx(ref_psnr, abs=1e-9)
        assert float(ours_ssim[i]) == pytest.approx(ref_ssim, abs=1e-4)


def test_float_inputs_are_quantised_like_uint8():
    originals, recons = _photo_pairs()
    a, b = _nchw(originals), _nchw(recons)
    # Float images a hair away from the uint8 grid quantise back onto it.
    a_float = a.float() / 255 + 1e-4
    b_float = (b.float() / 255 - 1e-4).clamp(0, 1)
    torch.testing.assert_close(psnr(a_float, b_float), psnr(a, b), rtol=0, atol=0)
    torch.testing.assert_close(ssim(a_float, b_float), ssim(a, b), rtol=0, atol=0)
    assert torch.isinf(psnr(a, a)).all()


def test_streaming_means_with_padding_and_duplicates():
    originals, recons = _photo_pairs()
    a, b = _nchw(originals), _nchw(recons)
    metrics = ReconstructionMetrics(lpips=False)
    assert metrics.update(a[:3], b[:3], index=[0, 1, 2]) == 3
    # Padding (masked) and a repeated index (deduplicated) must not count.
    assert metrics.update(a[[3, 0, 1]], b[[3, 0, 1]], valid=[True, True, False], index=[3, 0, 1]) == 1
    result = metrics.compute()
    assert result["count"] == 4
    assert result["psnr"] == pytest.approx(float(psnr(a, b).mean()), rel=1e-12)
    assert result["ssim"] == pytest.approx(float(ssim(a, b).mean()), rel=1e-12)
    assert result["lpips"] is None and result["lpips_reason"] == "n/a: not requested"


def test_lpips_without_vgg_weights_says_na_and_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("UNIFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(rec.VGG_WEIGHTS_ENV, str(tmp_path / "vgg.pth"))
    metrics = ReconstructionMetrics(lpips=True)
    originals, recons = _photo_pairs()
    metrics.update(_nchw(originals[:1]), _nchw(recons[:1]))
    result = metrics.compute()
    assert result["lpips"] is None
    reason = result["lpips_reason"]
    assert reason.startswith("n/a: VGG weights not found at ")
    for path in (
        tmp_path / "vgg.pth",
        tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth",
        tmp_path / "cache",
    ):
        assert str(path) in reason


def test_mismatched_shapes_and_tiny_images_are_rejected():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), torch.zeros(1, 3, 16, 17, dtype=torch.uint8))
    with pytest.raises(ValueError, match="larger than 11 px"):
        ssim(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
