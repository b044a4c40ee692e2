"""UniFlowTokenizer: unified encoder (student) + frozen teacher + latent projection + pixel flow decoder."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from uniflow.config import to_yaml
from uniflow.encoders import EncoderAdapter, EncoderFeatures, build_encoder
from uniflow.io import atomic_write_bytes, atomic_write_text
from uniflow.tokenizer.config import TokenizerConfig, load_tokenizer_config
from uniflow.tokenizer.decoder import PixelFlowDecoder
from uniflow.tokenizer.distill import SelfDistillationLoss
from uniflow.tokenizer.latent import LatentProjection

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
# Architecture (config.json, and remote code if any) of a Hugging Face encoder, so loading needs no hub.
HF_ENCODER_DIR = "encoder"
# Submodules that exist only while training; not part of a saved tokenizer.
TRAINING_ONLY_PREFIXES = ("teacher.", "perceptual.")
# Images may overshoot [0, 1] by resampling error; beyond this it is a wrong value range.
RANGE_TOLERANCE = 1e-3
# Value of the border added to sides that are not a multiple of the stride: mid-grey is 0 in the
# flow's [-1, 1] pixel space and near every encoder's normalisation mean, so the border carries as
# little signal as an input can; black is an extreme value with a hard edge at the image border.
PAD_VALUE = 0.5


def check_images(images: Any, name: str = "images") -> None:
    """Raise ValueError unless ``images`` is a non-empty float ``B x 3 x H x W`` tensor in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(
            f"{name}: expected a torch.Tensor B x 3 x H x W in [0, 1], got {type(images).__name__}"
        )
    if images.dim() != 4:
        raise ValueError(f"{name}: expected rank 4 (B x 3 x H x W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty batch, got shape {tuple(images.shape)}")
    if images.shape[1] != 3:
        raise ValueError(f"{name}: expected 3 channels (RGB) in dim 1, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype with values in [0, 1], got {images.dtype}")
    lo, hi = (v.item() for v in torch.aminmax(images.detach()))
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(f"{name}: expected values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")


def _lpips_network(weights: str | None) -> nn.Module:
    """The differentiable LPIPS-VGG network (frozen) for the optional perceptual term on x_hat."""
    from uniflow.metrics.reconstruction import load_lpips_vgg

    metric, reason = load_lpips_vgg(weights)
    if metric is None:
        raise FileNotFoundError(f"tokenizer.lambda_lpips > 0 needs LPIPS VGG weights; {reason}")
    return metric.net.requires_grad_(False).eval()


def padded_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """Both sides rounded up to a multiple of ``stride`` (the encoder's patch x token merge)."""
    return -(-height // stride) * stride, -(-width // stride) * stride


def pad_to_stride(images: torch.Tensor, stride: int) -> torch.Tensor:
    """Centred mid-grey padding to a multiple of ``stride``: the tokenizer's policy, and the raw
    encoder's when it is compared with a tokenizer (it must see the same pixels)."""
    h, w = images.shape[-2:]
    ph, pw = padded_size(h, w, stride)
    if (ph, pw) == (h, w):
        return images
    top, left = (ph - h) // 2, (pw - w) // 2
    return F.pad(images, (left, pw - w - left, top, ph - h - top), value=PAD_VALUE)


class UniFlowTokenizer(nn.Module):
    """The UniFlow tokenizer (public API: README "Python API").

    ``encode`` maps images in [0, 1] to a latent ``B x d x h x w``; ``decode`` integrates the
    patch-wise pixel flow back to images; ``semantic_tokens`` gives the student's last-layer patch
    tokens for understanding. ``training_losses`` computes L = lambda_d L_dist + lambda_f L_flow.
    """

    def __init__(self, cfg: TokenizerConfig, for_training: bool = True):
        """``for_training=False`` skips the parts only training needs (teacher, perceptual loss)."""
        super().__init__()
        self.cfg = cfg
        self.student: EncoderAdapter = build_encoder(cfg.encoder)
        self.patch_size = self.student.patch_size
        merge = 2 if cfg.decoder.token_merge else 1
        # Inputs are padded to a multiple of this; the latent grid is (H / stride, W / stride).
        self.stride = self.patch_size * merge
        self.image_size = cfg.image_size
        side = self.padded_size(cfg.image_size, cfg.image_size)
        self.latent = LatentProjection(self.student.width, cfg.decoder.latent_dim, cfg.decoder.token_merge)
        self.decoder = PixelFlowDecoder(
            cfg.decoder, cfg.flow, self.patch_size, (side[0] // self.patch_size, side[1] // self.patch_size)
        )
        d = cfg.distill
        self.distill = SelfDistillationLoss(self.student.depth, d.mode, d.beta, d.normalization, d.layers)
        self.teacher: EncoderAdapter | None = None
        if for_training and self.distill.enabled:
            self.teacher = copy.deepcopy(self.student).requires_grad_(False).eval()
        self.perceptual: nn.Module | None = None
        if for_training and cfg.lambda_lpips > 0:
            self.perceptual = _lpips_network(cfg.lpips_weights)
        if cfg.grad_checkpointing:
            self.student.set_grad_checkpointing(True)
            self.decoder.gtb.grad_checkpointing = True

    # ------------------------------------------------------------------ construction and persistence
    @classmethod
    def from_config(
        cls,
        source: str | Path | Mapping[str, Any] | TokenizerConfig,
        overrides: Sequence[str] = (),
        **kwargs: Any,
    ) -> UniFlowTokenizer:
        """An untrained tokenizer from a YAML path (run or tokenizer config), a mapping or a config object."""
        cfg = source if isinstance(source, TokenizerConfig) else load_tokenizer_config(source, overrides)
        return cls(cfg, **kwargs)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device = "cpu"
    ) -> UniFlowTokenizer:
        """Load a tokenizer written by :meth:`save_pretrained` (no teacher: inference and fine-tuning)."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"not a UniFlow tokenizer directory: tried {path.resolve()}")
        cfg = load_tokenizer_config(config_path)
        # The weights file holds the adapted encoder: never fetch or load the original weights again.
        cfg.encoder.pretrained, cfg.encoder.checkpoint = False, None
        if (directory / HF_ENCODER_DIR).is_dir():
            cfg.encoder.name = str(directory / HF_ENCODER_DIR)
        model = cls(cfg, for_training=False)
        state = load_file(str(weights_path), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{weights_path} does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        return model.eval()

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.yaml`` and ``model.safetensors`` (student + decoder; the teacher is not needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith(TRAINING_ONLY_PREFIXES)
        }
        # The resolved normalisation goes into the config so loading never needs the encoder's hub files.
        cfg = dataclasses.replace(
            self.cfg,
            encoder=dataclasses.replace(
                self.cfg.encoder, mean=list(self.student.mean), std=list(self.student.std)
            ),
        )
        if cfg.encoder.backend == "hf":
            self.student.model.config.save_pretrained(directory / HF_ENCODER_DIR)
        atomic_write_bytes(directory / WEIGHTS_FILE, save_safetensors(state, metadata={"format": "pt"}))
        atomic_write_text(directory / CONFIG_FILE, to_yaml(cfg))

    def train(self, mode: bool = True) -> UniFlowTokenizer:
        super().train(mode)
        for frozen in (self.teacher, self.perceptual):  # fixed references: no dropout, no norm updates
            if frozen is not None:
                frozen.eval()
        return self

    # ------------------------------------------------------------------ geometry
    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        return padded_size(height, width, self.stride)

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """Pad with mid-grey (:data:`PAD_VALUE`), centred, so both sides are multiples of patch x merge."""
        return pad_to_stride(images, self.stride)

    @property
    def padding_policy(self) -> str:
        """What :meth:`pad` does, in words (for the provenance of reconstruction numbers)."""
        return (
            f"sides padded to a multiple of {self.stride} px, centred, with mid-grey {PAD_VALUE}; "
            "output cropped back"
        )

    @staticmethod
    def crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Undo :meth:`pad`: the centred ``size`` window."""
        h, w = images.shape[-2:]
        top, left = (h - size[0]) // 2, (w - size[1]) // 2
        return images[..., top : top + size[0], left : left + size[1]]

    # ------------------------------------------------------------------ public API
    def encode_features(self, images: torch.Tensor) -> EncoderFeatures:
        """The student's per-block patch tokens for images in [0, 1] (padded as needed)."""
        check_images(images)
        return self.student(self.student.normalize(self.pad(images)))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``B x 3 x H x W`` in [0, 1] -> latent ``B x d x h x w``."""
        features = self.encode_features(images)
        return self.latent(features.last, features.grid)

    def semantic_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The student's last-layer patch tokens ``B x N x D`` (prefix tokens dropped)."""
        return self.encode_features(images).last

    @torch.no_grad()
    def decode(
        self,
        z: torch.Tensor,
        steps: int | None = None,
        sampler: str | None = None,
        size: tuple[int, int] | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Latent ``B x d x h x w`` -> images ``B x 3 x H x W`` in [0, 1].

        ``steps``/``sampler`` default to the config (one Euler step). ``size`` crops the padded output
        back to the input size; by default the full ``h * stride`` x ``w * stride`` image is returned.
        The starting noise is ``noise`` (``B x N x 3 p^2``, N decoder patches) or drawn from ``generator``.
        """
        if z.dim() != 4 or z.shape[1] != self.cfg.decoder.latent_dim:
            raise ValueError(
                f"expected a latent B x {self.cfg.decoder.latent_dim} x h x w, got shape {tuple(z.shape)}"
            )
        steps = steps if steps is not None else self.cfg.flow.steps
        sampler = sampler or self.cfg.flow.sampler
        pixels = self.decoder.sample(z, steps=steps, sampler=sampler, noise=noise, generator=generator)
        images = ((pixels.float() + 1) / 2).clamp(0, 1)
        return self.crop(images, size) if size is not None else images

    @torch.no_grad()
    def reconstruct(
        self,
        images: torch.Tensor,
        steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """decode(encode(images)) cropped back to the input size (noise from ``generator`` if given)."""
        z = self.encode(images)
        return self.decode(
            z, steps=steps, sampler=sampler, size=tuple(images.shape[-2:]), generator=generator
        )

    def training_losses(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """All loss terms for one batch of images in [0, 1].

        Returns ``total`` (= lambda_d * distill + lambda_f * flow [+ lambda_lpips * lpips]), ``distill``,
        ``flow``, ``lpips`` when that optional term is on, and per-layer
        ``alpha`` and ``weight`` (detached, with ``layers`` their 1-based block ids), plus the one-step
        reconstruction ``x_hat`` in [-1, 1] for logging or an optional perceptual term.
        """
        check_images(images)
        padded = self.pad(images)
        features = self.student(self.student.normalize(padded))
        z = self.latent(features.last, features.grid)
        flow_out = self.decoder.flow_loss(z, padded * 2 - 1, generator=generator)
        zero = flow_out["loss"].new_zeros(())
        out: dict[str, Any] = {"flow": flow_out["loss"], "distill": zero, "x_hat": flow_out["x_hat"]}
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(self.teacher.normalize(padded))
            dist = self.distill(features.layers, target.layers)
            out.update(
                distill=dist.loss, alpha=dist.alphas, weight=dist.weights.detach(), layers=dist.layer_ids
            )
        out["total"] = self.cfg.lambda_distill * out["distill"] + self.cfg.lambda_flow * out["flow"]
        if self.perceptual is not None:
            # LPIPS of the one-step estimate against the (padded) input; both in [-1, 1].
            x_hat = flow_out["x_hat"].clamp(-1, 1)
            out["lpips"] = self.perceptual(x_hat, padded * 2 - 1).mean()
            out["total"] = out["total"] + self.cfg.lambda_lpips * out["lpips"]
        return out
