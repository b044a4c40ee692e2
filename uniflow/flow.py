"""Rectified flow: interpolation, time sampling, ODE samplers and guidance.

Convention (rectified flow, Liu et al. 2023; the UniFlow paper's decoder): t = 0 is data, t = 1 is noise,

    x_t = (1 - t) * x + t * eps,        u = dx_t/dt = eps - x,

and sampling integrates dx/dt = v(x, t) from t = 1 down to t = 0. The same code serves the
patch-wise pixel decoder of the tokenizer and the latent generators.

Time shift (Esser et al. 2024, SD3; Zheng et al. 2025, RAE): a latent with more numbers per image
keeps more of its signal at a given noise level, so training and sampling move their times toward
noise with ``t' = s t / (1 + (s - 1) t)``, ``s = sqrt(h * w * c / 4096)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

SAMPLERS = ("euler", "heun")

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``v(x_t, t)`` with ``t`` of shape ``(batch,)``; returns a tensor shaped like ``x_t``."""


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape + (1,) * (like.dim() - t.dim())).to(like.dtype)


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x_t, u)``: the noisy point on the straight path and the target velocity."""
    tt = _expand(t, x)
    return (1 - tt) * x + tt * noise, noise - x


def one_step_estimate(x_t: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """The data point implied by one Euler step from ``t`` to 0: ``x_hat = x_t - t * v``."""
    return x_t - _expand(t, x_t) * velocity


def sample_time(
    n: int,
    logit_normal_prob: float = 0.9,
    mean: float = 0.0,
    std: float = 1.0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    *,
    shift: float = 1.0,
) -> torch.Tensor:
    """``n`` independent times: ``sigmoid(N(mean, std))`` with probability ``logit_normal_prob``, else ``U(0, 1)``.

    The logit-normal part concentrates training on intermediate noise levels, where the velocity is
    hardest to predict; the uniform part keeps both ends of the path covered. ``shift`` then moves
    them with :func:`time_shift`, the same map the sampler's grid uses.
    """
    if not 0.0 <= logit_normal_prob <= 1.0:
        raise ValueError(f"logit_normal_prob must be in [0, 1], got {logit_normal_prob}")
    logit_normal = torch.sigmoid(torch.randn(n, device=device, generator=generator) * std + mean)
    uniform = torch.rand(n, device=device, generator=generator)
    pick = torch.rand(n, device=device, generator=generator) < logit_normal_prob
    t = torch.where(pick, logit_normal, uniform)
    return t if shift == 1.0 else time_shift(t, shift)


def shift_for_latent(h: int, w: int, c: int) -> float:
    """The dimension-dependent shift ``sqrt(h * w * c / 4096)``: 1 for a 16 x 16 x 16 latent, 2 for 16 x 16 x 64."""
    if min(h, w, c) < 1:
        raise ValueError(f"latent sizes must be positive, got h={h}, w={w}, c={c}")
    return math.sqrt(h * w * c / 4096)


def _check_shift(shift: float) -> None:
    if not shift > 0:
        raise ValueError(f"the time shift must be positive, got {shift}")


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """``t' = s t / (1 + (s - 1) t)``: monotonic on [0, 1], fixes 0 and 1, moves t toward noise for s > 1."""
    _check_shift(shift)
    return shift * t / (1 + (shift - 1) * t)


def inverse_time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The inverse of :func:`time_shift` (the same map with ``1 / s``)."""
    _check_shift(shift)
    return t / (shift - (shift - 1) * t)


def time_grid(steps: int, device: torch.device | str | None = None, *, shift: float = 1.0) -> torch.Tensor:
    """``steps + 1`` times from 1 (noise) to 0 (data): equally spaced, then time-shifted by ``shift``."""
    if steps < 1:
        raise ValueError(f"the sampler needs at least one step, got steps={steps}")
    grid = torch.linspace(1.0, 0.0, steps + 1, device=device)
    return grid if shift == 1.0 else time_shift(grid, shift)


@torch.no_grad()
def sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    steps: int = 1,
    sampler: str = "euler",
    *,
    shift: float = 1.0,
) -> torch.Tensor:
    """Integrate from ``noise`` at t = 1 to t = 0 with ``steps`` Euler or Heun steps on the ``shift``-ed grid."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    times = time_grid(steps, noise.device, shift=shift)
    x = noise
    batch = noise.shape[0]
    for t_cur, t_next in itertools.pairwise(times):
        dt = t_next - t_cur  # negative: time runs backwards
        v_cur = velocity(x, t_cur.expand(batch))
        x_euler = x + dt * v_cur
        if sampler == "euler":
            x = x_euler
        else:
            v_next = velocity(x_euler, t_next.expand(batch))
            x = x + dt * 0.5 * (v_cur + v_next)
    return x


def classifier_free_guidance(
    conditional: VelocityFn,
    unconditional: VelocityFn,
    scale: float,
    interval: tuple[float, float] | None = None,
) -> VelocityFn:
    """``v = v_u + scale * (v_c - v_u)`` on every channel; ``scale = 1`` is the conditional model alone.

    With ``interval = (t_lo, t_hi)`` the guided velocity is used only for samples whose t lies in
    ``[t_lo, t_hi]`` (flow time, after any time shift) and the conditional one elsewhere
    (Kynkäänniemi et al. 2024: guidance near pure noise mostly costs diversity, so ``t_hi < 1``
    leaves the first part of the trajectory unguided). A step where no sample is inside skips the
    unconditional call.
    """
    if interval is not None and not 0.0 <= interval[0] <= interval[1] <= 1.0:
        raise ValueError(f"the guidance interval must satisfy 0 <= t_lo <= t_hi <= 1, got {interval}")
    if scale == 1.0:
        return conditional

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_c = conditional(x, t)
        if interval is None:
            inside = None
        else:
            inside = (t >= interval[0]) & (t <= interval[1])
            if not bool(inside.any()):
                return v_c
        v_u = unconditional(x, t)
        v = v_u + scale * (v_c - v_u)
        if inside is None:
            return v
        return torch.where(inside.reshape(inside.shape + (1,) * (v.dim() - 1)), v, v_c)

    return guided
