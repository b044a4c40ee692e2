"""One interface for every pretrained vision encoder the tokenizer can adapt."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DROPOUT_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


@dataclass
class EncoderFeatures:
    """Per-block outputs of a ViT encoder.

    ``layers[l]`` holds the patch tokens after block ``l + 1`` (``B x N x D``, row-major over the
    patch grid), with the class/register tokens split off into ``prefix[l]`` (``B x P x D``, P may be 0).
    """

    layers: list[torch.Tensor]
    prefix: list[torch.Tensor]
    grid: tuple[int, int]

    @property
    def last(self) -> torch.Tensor:
        return self.layers[-1]


class EncoderAdapter(nn.Module):
    """A ViT whose every block's patch tokens can be read, plus its own input normalisation.

    Subclasses set ``patch_size``, ``width``, ``depth``, ``num_prefix_tokens`` and ``mean``/``std``
    (the encoder's own normalisation, through :meth:`set_normalization`) and implement :meth:`forward`.
    """

    patch_size: int
    width: int
    depth: int
    num_prefix_tokens: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Whether every parameter gets a gradient from the block outputs. timm/open_clip towers are pruned
    # to make it so; arbitrary transformers models keep poolers, final norms or mask tokens, so DDP
    # must look for unused parameters with them.
    all_parameters_used: bool = True

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Record the encoder's input normalisation, and keep it as (unsaved) buffers that move with
        the module, so :meth:`normalize` never copies from the host in the training step."""
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.register_buffer("pixel_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the encoder's input space."""
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def forward(self, pixels: torch.Tensor) -> EncoderFeatures:  # pragma: no cover - abstract
        """Normalised pixels ``B x 3 x H x W`` (H, W multiples of ``patch_size``) -> per-block tokens."""
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"encoder input {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        return height // self.patch_size, width // self.patch_size


def disable_stochastic_layers(model: nn.Module, what: str) -> None:
    """Set every dropout, stochastic-depth (DropPath) and patch-dropout rate in ``model`` to 0.

    An adapted encoder is the tokenizer's student, and its frozen copy, in eval mode, is the teacher:
    the two must compute the same function at initialisation, or alpha_l > 0 from step 0 and the
    distillation pulls the student toward a stochastic target. Hub configs do ask for these
    (InternViT-300M-448px sets drop_path_rate 0.1), so every adapter turns them off after building
    and logs which modules had a non-zero rate.
    """
    changed = []
    for name, module in model.named_modules():
        if isinstance(module, DROPOUT_MODULES):
            attr = "p"
        elif isinstance(module, nn.MultiheadAttention):  # its attention dropout is a float
            attr = "dropout"
        elif isinstance(getattr(module, "drop_prob", None), (int, float)):
            attr = "drop_prob"  # timm's DropPath, transformers' *DropPath
        elif type(module).__name__ == "PatchDropout":  # timm and open_clip
            attr = "prob"
        else:
            continue
        if getattr(module, attr):
            setattr(module, attr, 0.0)
            changed.append(name)
    if changed:
        log.warning(
            "%s: disabled dropout / stochastic depth in %d modules (e.g. %s): the student must match "
            "its frozen teacher at initialisation",
            what,
            len(changed),
            changed[0],
        )


def require_file(path: str | Path, what: str = "encoder weights") -> Path:
    """Return ``path`` if it is a file, else fail with the path that was tried."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"{what} not found: tried {resolved.resolve()}")
    return resolved


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (``.pth/.pt/.bin``), unwrapping common wrappers."""
    path = require_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state
