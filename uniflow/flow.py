"""Rectified flow: interpolation, time sampling, ODE samplers and guidance.

Convention (UNIFLOW.md section 3): t = 0 is data, t = 1 is noise,

    x_t = (1 - t) * x + t * eps,        u = dx_t/dt = eps - x,

and sampling integrates dx/dt = v(x, t) from t = 1 down to t = 0. The same code serves the
patch-wise pixel decoder of the tokenizer and the latent generators.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

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
) -> torch.Tensor:
    """``n`` independent times: ``sigmoid(N(mean, std))`` with probability ``logit_normal_prob``, else ``U(0, 1)``.

    The logit-normal part concentrates training on intermediate noise levels, where the velocity is
    hardest to predict; the uniform part keeps both ends of the path covered.
    """
    if not 0.0 <= logit_normal_prob <= 1.0:
        raise ValueError(f"logit_normal_prob must be in [0, 1], got {logit_normal_prob}")
    logit_normal = torch.sigmoid(torch.randn(n, device=device, generator=generator) * std + mean)
    uniform = torch.rand(n, device=device, generator=generator)
    pick = torch.rand(n, device=device, generator=generator) < logit_normal_prob
    return torch.where(pick, logit_normal, uniform)


def time_grid(steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``steps + 1`` equally spaced times from 1 (noise) to 0 (data)."""
    if steps < 1:
        raise ValueError(f"the sampler needs at least one step, got steps={steps}")
    return torch.linspace(1.0, 0.0, steps + 1, device=device)


@torch.no_grad()
def sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    steps: int = 1,
    sampler: str = "euler",
) -> torch.Tensor:
    """Integrate from ``noise`` at t = 1 to t = 0 with ``steps`` Euler or Heun steps."""
    if sampler not in ("euler", "heun"):
        raise ValueError(f"unknown sampler {sampler!r}; choose 'euler' or 'heun'")
    times = time_grid(steps, noise.device)
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


def classifier_free_guidance(conditional: VelocityFn, unconditional: VelocityFn, scale: float) -> VelocityFn:
    """``v = v_u + scale * (v_c - v_u)``; ``scale = 1`` is the conditional model alone."""
    if scale == 1.0:
        return conditional

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_u = unconditional(x, t)
        return v_u + scale * (conditional(x, t) - v_u)

    return guided
