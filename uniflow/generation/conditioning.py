"""What the class-conditional latent generators share: label dropout and the input check."""

from __future__ import annotations

import torch


class ClassConditionedLatents:
    """Mixin for generators over ``B x in_channels x h x w`` latents with ``num_classes`` + a null class.

    The null class (index ``num_classes``) is the unconditional input classifier-free guidance needs;
    training replaces labels by it with probability ``class_dropout``.
    """

    num_classes: int
    class_dropout: float
    in_channels: int
    input_size: tuple[int, int]

    @property
    def null_class(self) -> int:
        return self.num_classes

    def drop_labels(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace each label by the null class with probability ``class_dropout`` (training for guidance)."""
        if self.class_dropout == 0.0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device, generator=generator) < self.class_dropout
        return torch.where(drop, torch.full_like(labels, self.null_class), labels)

    def check_latents(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Latents of the shape the model was built for, and one label per latent; else a ValueError."""
        expected = (self.in_channels, *self.input_size)
        if z.dim() != 4 or tuple(z.shape[1:]) != expected:
            raise ValueError(f"expected latents B x {' x '.join(map(str, expected))}, got {tuple(z.shape)}")
        if labels.shape != (z.shape[0],):
            raise ValueError(
                f"expected one label per latent, shape ({z.shape[0]},), got {tuple(labels.shape)}"
            )
