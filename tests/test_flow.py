import pytest
import torch

from uniflow import flow


def test_interpolation_endpoints_and_target():
    x, eps = torch.randn(4, 3), torch.randn(4, 3)
    x0, u = flow.interpolate(x, eps, torch.zeros(4))
    x1, _ = flow.interpolate(x, eps, torch.ones(4))
    torch.testing.assert_close(x0, x)
    torch.testing.assert_close(x1, eps)
    torch.testing.assert_close(u, eps - x)


def test_one_euler_step_on_the_straight_path_recovers_the_data_exactly():
    # For a single pair (x, eps) the true velocity field is the constant eps - x.
    x, eps = torch.randn(8, 5), torch.randn(8, 5)
    out = flow.sample(lambda xt, t: eps - x, eps, steps=1, sampler="euler")
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_linear_velocity_field_endpoint(steps, sampler):
    # v(x, t) = a + b * t  integrates exactly with Heun (trapezoid) and with Euler only for b = 0.
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    noise = torch.randn(2, 3)
    exact = noise - a - b / 2  # x(0) = x(1) - int_0^1 (a + b t) dt
    out = flow.sample(lambda x, t: a + b * t[:, None], noise, steps=steps, sampler=sampler)
    if sampler == "heun":
        torch.testing.assert_close(out, exact)
    else:
        # Euler (left Riemann sum, going backwards from t=1) over-counts b by b / (2 steps).
        torch.testing.assert_close(out, exact - b / (2 * steps))


def test_time_sampling_mix():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_time(200_000, logit_normal_prob=0.9, generator=g)
    assert t.min() >= 0 and t.max() <= 1
    # The logit-normal part has no mass near the ends; uniform contributes 10% -> ~1% in [0, 0.01].
    near_zero = (t < 0.01).float().mean().item()
    assert 0.0008 < near_zero < 0.0013
    t_uniform = flow.sample_time(200_000, logit_normal_prob=0.0, generator=g)
    assert (t_uniform < 0.01).float().mean().item() == pytest.approx(0.01, abs=0.002)
    with pytest.raises(ValueError, match="logit_normal_prob"):
        flow.sample_time(3, logit_normal_prob=1.5)


def test_guidance_and_bad_sampler():
    cond = lambda x, t: torch.ones_like(x)  # noqa: E731
    uncond = lambda x, t: torch.zeros_like(x)  # noqa: E731
    guided = flow.classifier_free_guidance(cond, uncond, 3.0)
    torch.testing.assert_close(guided(torch.zeros(2), torch.zeros(2)), torch.full((2,), 3.0))
    assert flow.classifier_free_guidance(cond, uncond, 1.0) is cond
    with pytest.raises(ValueError, match="unknown sampler"):
        flow.sample(cond, torch.zeros(2, 2), sampler="rk4")
    with pytest.raises(ValueError, match="at least one step"):
        flow.sample(cond, torch.zeros(2, 2), steps=0)
