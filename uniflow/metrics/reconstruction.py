"""Reconstruction metrics: PSNR, SSIM and LPIPS, per image and as a streaming, rank-mergeable mean.

Both images are first quantised to uint8 exactly as saving them as PNG would, because that is how
published reconstruction numbers are made (reconstructions are written out, then compared); PSNR
is per image on the 0..255 scale and then averaged. SSIM is torchmetrics' Gaussian-window SSIM
(11 x 11, sigma 1.5, the Wang et al. settings) on the 0..255 scale with data range 255. LPIPS uses
the VGG backbone, but only from a local weights file: without one it is reported as n/a, with the
paths that were tried, rather than computed with some other backbone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from uniflow.metrics.inception import cache_dir, to_uint8
from uniflow.metrics.ledger import SampleLedger, distributed_world

VGG_WEIGHTS_ENV = "UNIFLOW_VGG16_WEIGHTS"
_SSIM_WINDOW = 11  # Gaussian window, sigma 1.5: torchmetrics' and scikit-image's size for that sigma


def _pair_uint8(originals: torch.Tensor, reconstructions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = to_uint8(originals), to_uint8(reconstructions)
    if a.shape != b.shape:
        raise ValueError(f"originals {tuple(a.shape)} and reconstructions {tuple(b.shape)} differ in shape")
    return a, b.to(a.device)


def psnr(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB (float64, B) on the uint8-quantised images; identical images give inf."""
    a, b = _pair_uint8(originals, reconstructions)
    mse = (a.double() - b.double()).square().flatten(1).mean(dim=1)
    return 10 * torch.log10(255.0**2 / mse)


def ssim(originals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (float64, B) on the uint8-quantised images, data range 255.

    The SSIM map is averaged without its 5-pixel border, where torchmetrics' window reads
    reflection padding: that is the reference definition (Wang et al.'s MATLAB code filters
    'valid') and scikit-image's, which it then matches to ~1e-5. The map is computed in float32
    because torchmetrics' float64 convolutions are ~15x slower on CPU.
    """
    a, b = _pair_uint8(originals, reconstructions)
    if min(a.shape[2:]) <= _SSIM_WINDOW:
        raise ValueError(f"SSIM needs images larger than {_SSIM_WINDOW} px a side, got {tuple(a.shape[2:])}")
    _, full = structural_similarity_index_measure(
        b.float(),
        a.float(),
        data_range=255.0,
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=_SSIM_WINDOW,
        reduction="none",
        return_full_image=True,
    )
    border = _SSIM_WINDOW // 2
    return full[..., border:-border, border:-border].double().mean(dim=(1, 2, 3))


def vgg_weights_candidates(path: str | Path | None = None) -> list[Path]:
    """Where the torchvision VGG16 ImageNet weights LPIPS needs are looked for, in order."""
    from torchvision.models import VGG16_Weights

    name = Path(VGG16_Weights.IMAGENET1K_V1.url).name
    candidates = [Path(p) for p in (path, os.environ.get(VGG_WEIGHTS_ENV)) if p]
    return [*candidates, Path(torch.hub.get_dir()) / "checkpoints" / name, cache_dir() / name]


@contextlib.contextmanager
def _torch_hub_dir_with(weights: Path) -> Iterator[None]:
    """Make torchvision find ``weights`` as its cached VGG16 download (it never consults other paths)."""
    from torchvision.models import VGG16_Weights

    name = Path(VGG16_Weights.IMAGENET1K_V1.url).name
    previous = torch.hub.get_dir()
    if weights.parent == Path(previous) / "checkpoints" and weights.name == name:
        yield
        return
    with tempfile.TemporaryDirectory() as hub:
        (Path(hub) / "checkpoints").mkdir()
        (Path(hub) / "checkpoints" / name).symlink_to(weights.resolve())
        torch.hub.set_dir(hub)
        try:
            yield
        finally:
            torch.hub.set_dir(previous)


def load_lpips_vgg(path: str | Path | None = None) -> tuple[nn.Module | None, str | None]:
    """(torchmetrics LPIPS-VGG module, None), or (None, "n/a: ... <paths tried>") without local weights."""
    candidates = vgg_weights_candidates(path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        return None, "n/a: VGG weights not found at " + ", ".join(str(p) for p in candidates)
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    with _torch_hub_dir_with(found):
        module = LearnedPerceptualImagePatchSimilarity(net_type="vgg", normalize=True, reduction="sum")
    return module.eval(), None


class ReconstructionMetrics:
    """Streaming PSNR / SSIM / LPIPS means over (original, reconstruction) batches.

    ``update(originals, reconstructions, valid=, index=)`` takes uint8 or [0, 1] float
    B x 3 x H x W pairs and applies the same exactly-once rules as :class:`FIDMetric`; ``sync()``
    sums over ranks; ``compute()`` returns the means, the sample count and LPIPS's n/a reason.
    """

    def __init__(
        self, lpips: bool = True, vgg_weights: str | Path | None = None, device: torch.device | str = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.lpips_module, self.lpips_reason = (
            load_lpips_vgg(vgg_weights) if lpips else (None, "n/a: not requested")
        )
        if self.lpips_module is not None:
            self.lpips_module.to(self.device)
        # psnr, ssim, lpips sums and the sample count, float64 so they all-reduce in one call.
        self.sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        self.ledger = SampleLedger()

    @torch.no_grad()
    def update(
        self,
        originals: torch.Tensor,
        reconstructions: torch.Tensor,
        *,
        valid: torch.Tensor | Sequence[bool] | None = None,
        index: torch.Tensor | Sequence[int] | None = None,
    ) -> int:
        """Add a batch of pairs; returns how many entered the sums."""
        keep = self.ledger.accept(originals.shape[0], valid, index)
        if not keep.any():
            return 0
        a, b = _pair_uint8(
            originals[keep.to(originals.device)], reconstructions[keep.to(reconstructions.device)]
        )
        a, b = a.to(self.device), b.to(self.device)
        self.sums[0] += psnr(a, b).sum()
        self.sums[1] += ssim(a, b).sum()
        if self.lpips_module is not None:
            self.sums[2] += self.lpips_module(b.float() / 255, a.float() / 255).double()
            self.lpips_module.reset()
        self.sums[3] += a.shape[0]
        return int(keep.sum())

    def sync(self, group: dist.ProcessGroup | None = None) -> None:
        """Sum over ranks (once), after checking no sample index was counted on two ranks."""
        if self.ledger.synced:
            return
        self.ledger.check_across_ranks(group)
        if distributed_world(group) > 1:
            dist.all_reduce(self.sums, op=dist.ReduceOp.SUM, group=group)

    @property
    def count(self) -> int:
        return round(float(self.sums[3]))

    def compute(self) -> dict[str, float | int | str | None]:
        """{"psnr", "ssim", "lpips" (None when n/a), "lpips_reason", "count"}."""
        if self.count == 0:
            raise ValueError("no samples accumulated")
        psnr_sum, ssim_sum, lpips_sum, count = self.sums.tolist()
        return {
            "psnr": psnr_sum / count,
            "ssim": ssim_sum / count,
            "lpips": None if self.lpips_module is None else lpips_sum / count,
            "lpips_reason": self.lpips_reason,
            "count": self.count,
        }
