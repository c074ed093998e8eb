"""Tests for tinysora.diffusion.samplers against an exactly solvable flow.

Data ``x0 ~ N(mu, diag(s^2))`` in D = 4 dims. Along ``x_t = (1 - t) x0 + t noise`` the
marginal is ``N((1 - t) mu, var_t)`` with ``var_t = (1 - t)^2 s^2 + t^2``, and since
``(x_t, noise - x0)`` are jointly Gaussian the optimal velocity is linear in ``x``::

    v*(x, t) = E[noise - x0 | x_t = x]
             = Cov(v, x_t) / var_t * (x - (1 - t) mu) - mu
             = (t - (1 - t) s^2) / var_t * (x - (1 - t) mu) - mu

Its ODE is solved by ``x_t = (1 - t) mu + sqrt(var_t) z`` (differentiate:
``-mu + (t - (1 - t) s^2) / sqrt(var_t) z``), so starting from ``x_1 = z`` every
exact solver must land on ``x_0 = mu + s z``. Errors are RMS over 256 starting
points, in float64 so the convergence orders are clean.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinysora.diffusion.flow import add_noise, velocity_target
from tinysora.diffusion.samplers import (
    SAMPLERS,
    cfg_denoiser,
    flow_times,
    get_sampler,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
)

MU = torch.tensor([0.5, -1.0, 1.5, 0.0], dtype=torch.float64)
S = torch.tensor([0.5, 0.8, 1.2, 2.0], dtype=torch.float64)


def exact_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v*(x, t) for x0 ~ N(MU, S^2); x (B, 4), t (B,)."""
    t = t.to(x.dtype)[:, None]  # (B, 1)
    mu, s = MU.to(x.dtype), S.to(x.dtype)
    var = (1 - t) ** 2 * s**2 + t**2  # (B, 4)
    return (t - (1 - t) * s**2) / var * (x - (1 - t) * mu) - mu


def start_noise(n: int = 256, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=dtype)  # (n, 4)


def rms_error(name: str, steps: int, shift: float, z: torch.Tensor) -> float:
    x = get_sampler(name)(exact_velocity, z.clone(), flow_times(steps, shift))
    return (x - (MU + S * z)).pow(2).mean().sqrt().item()


def fitted_order(steps: list[int], errors: list[float]) -> float:
    """-slope of the least-squares line through (log steps, log error)."""
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    return float(-slope)


# ----------------------------------------------------------------------------- the analytic field


@pytest.mark.parametrize("t", [0.3, 0.8])
def test_exact_velocity_matches_monte_carlo_regression(t):
    """Regress the training target noise - x0 on x_t per dim: slope/intercept = v*."""
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0 = MU + S * torch.randn(n, 4, generator=g, dtype=torch.float64)  # (n, 4)
    noise = torch.randn(n, 4, generator=g, dtype=torch.float64)  # (n, 4)
    xt = add_noise(x0, torch.full((n,), t, dtype=torch.float64), noise)  # (n, 4)
    v = velocity_target(x0, noise)  # (n, 4)
    xc, vc = xt - xt.mean(0), v - v.mean(0)
    slope = (xc * vc).mean(0) / xc.pow(2).mean(0)  # (4,)
    intercept = v.mean(0) - slope * xt.mean(0)  # (4,)
    # v* = a x + b with a = (t - (1 - t) s^2) / var_t, b = -a (1 - t) mu - mu
    var = (1 - t) ** 2 * S**2 + t**2
    a = (t - (1 - t) * S**2) / var
    b = -a * (1 - t) * MU - MU
    torch.testing.assert_close(slope, a, atol=0.02, rtol=0)
    torch.testing.assert_close(intercept, b, atol=0.02, rtol=0)
    # and the function itself agrees with the fitted line
    probe = torch.randn(8, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        exact_velocity(probe, torch.full((8,), t, dtype=torch.float64)),
        slope * probe + intercept,
        atol=0.1,
        rtol=0,
    )


def test_exact_path_solves_the_ode():
    """d/dt [(1 - t) mu + sqrt(var_t) z] = v*(x_t, t), checked by central differences."""
    z = start_noise(16)

    def path(u: float) -> torch.Tensor:
        return (1 - u) * MU + ((1 - u) ** 2 * S**2 + u**2).sqrt() * z  # (16, 4)

    for t in [0.1, 0.5, 0.9]:
        h = 1e-6
        dxdt = (path(t + h) - path(t - h)) / (2 * h)
        torch.testing.assert_close(
            dxdt,
            exact_velocity(path(t), torch.full((16,), t, dtype=torch.float64)),
            atol=1e-6,
            rtol=0,
        )


# ----------------------------------------------------------------------------- times


def test_flow_times():
    t = flow_times(10)
    assert t.shape == (11,) and t[0].item() == 1.0 and t[-1].item() == 0.0
    assert torch.all(t[1:] < t[:-1])
    torch.testing.assert_close(t, torch.linspace(1, 0, 11, dtype=torch.float64))
    t3 = flow_times(10, shift=3.0)
    assert t3[0].item() == 1.0 and t3[-1].item() == 0.0
    assert torch.all(t3[1:] < t3[:-1]) and torch.all(t3 >= t)
    with pytest.raises(ValueError):
        flow_times(0)


# ----------------------------------------------------------------------------- convergence


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_error_decreases_with_steps(name, shift):
    z = start_noise()
    errors = [rms_error(name, n, shift, z) for n in [4, 8, 16, 32, 64]]
    assert all(b < a for a, b in zip(errors[:-1], errors[1:], strict=True)), errors


@pytest.mark.parametrize(
    ("name", "steps", "tol"),
    [("heun", 32, 1e-3), ("dpmpp_2m", 128, 1e-3), ("euler", 128, 2e-2)],
)
def test_accuracy(name, steps, tol):
    # Measured (RMS, shift 1): heun 8.2e-4 @32, dpmpp_2m 5.2e-4 @128 (5.7e-3 @32),
    # euler 1.4e-2 @128 (2.7e-2 @64).
    assert rms_error(name, steps, 1.0, start_noise()) < tol


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize(("name", "min_order"), [("euler", 0.8), ("heun", 1.6), ("dpmpp_2m", 1.6)])
def test_convergence_order(name, min_order, shift):
    # DPM++(2M) on uniform-in-t times takes O(1) steps in lambda near t = 0, which
    # costs a log factor (error ~ log N / N^2): its local order creeps up to 2 only
    # slowly (about 1.7-1.8 here, lower with shift 3), hence the large step counts.
    z = start_noise()
    steps = [128, 256, 512, 1024]
    errors = [rms_error(name, n, shift, z) for n in steps]
    order = fitted_order(steps, errors)
    assert order > min_order, (order, errors)
    assert order < 2.3, (order, errors)  # not suspiciously better than the method allows


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samples_follow_the_data_distribution(name):
    z = start_noise(20_000, seed=3, dtype=torch.float32)
    x = get_sampler(name)(exact_velocity, z, flow_times(32, 2.0))
    torch.testing.assert_close(x.mean(0).double(), MU, atol=0.05, rtol=0)
    torch.testing.assert_close(x.std(0).double(), S, atol=0.05, rtol=0.03)


# ----------------------------------------------------------------------------- interface


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_sees_every_step(name):
    times = flow_times(6, 2.0)
    seen = []
    x = get_sampler(name)(exact_velocity, start_noise(8), times, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(6))
    assert [d["t"] for d in seen] == times[:-1].tolist()
    assert [d["t_next"] for d in seen] == times[1:].tolist()
    for a, b in zip(seen[:-1], seen[1:], strict=True):
        assert torch.equal(a["x_next"], b["x"])
    assert torch.equal(seen[-1]["x_next"], x)
    first = seen[0]
    v = exact_velocity(first["x"], torch.full((8,), first["t"], dtype=torch.float64))
    torch.testing.assert_close(first["denoised"], first["x"] - first["t"] * v)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_deterministic_and_no_global_rng(name):
    z = start_noise(32, dtype=torch.float32)
    state = torch.random.get_rng_state()
    a = get_sampler(name)(exact_velocity, z.clone(), flow_times(8, 3.0))
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(1234)
    b = get_sampler(name)(exact_velocity, z.clone(), flow_times(8, 3.0))
    assert torch.equal(a, b)
    assert a.dtype == torch.float32 and a.shape == z.shape


def test_extra_args_are_passed_as_kwargs():
    seen = []

    def denoiser(x, t, *, text, mask=None):
        seen.append((t.shape, t.dtype, text.shape, mask))
        return torch.zeros_like(x)

    x = torch.ones(3, 2, 5)
    text = torch.zeros(3, 7, 4)
    for sampler in (sample_euler, sample_heun, sample_dpmpp_2m):
        seen.clear()
        out = sampler(denoiser, x, [1.0, 0.5, 0.0], extra_args={"text": text, "mask": "m"})
        assert torch.equal(out, x)  # zero velocity: nothing moves
        assert seen and all(s == ((3,), torch.float32, (3, 7, 4), "m") for s in seen)
    # heun: 2 calls on the first step, 1 (Euler) on the step to t = 0
    seen.clear()
    sample_heun(denoiser, x, [1.0, 0.5, 0.0], extra_args={"text": text})
    assert len(seen) == 3


def test_one_step_lands_on_the_prediction():
    z = start_noise(8)
    for sampler in SAMPLERS.values():
        x = sampler(exact_velocity, z, [1.0, 0.0])
        torch.testing.assert_close(x, z - exact_velocity(z, torch.ones(8, dtype=torch.float64)))


def test_dpmpp_2m_rejects_bad_times():
    z = start_noise(2)
    with pytest.raises(ValueError, match="decreasing"):
        sample_dpmpp_2m(exact_velocity, z, [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="at least 2"):
        sample_euler(exact_velocity, z, [1.0])


def test_get_sampler():
    assert get_sampler("heun") is sample_heun
    with pytest.raises(ValueError) as e:
        get_sampler("ddim")
    message = str(e.value)
    assert "ddim" in message and all(name in message for name in SAMPLERS)


# ----------------------------------------------------------------------------- guidance


class CountingDenoiser:
    """v = x * (1 + t) + emb @ W (+ bias if given): depends on the cond tensor."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.weight = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 10

    def __call__(self, x, t, emb, bias=None):
        self.batches.append(x.shape[0])
        v = x * (1 + t[:, None]) + emb @ self.weight  # (B, 4)
        return v if bias is None else v + bias


def test_cfg_combines_cond_and_uncond_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g)
    t = torch.rand(5, generator=g)
    cond = torch.randn(5, 3, generator=g)
    empty = torch.zeros(5, 3)
    den = CountingDenoiser()
    guided = cfg_denoiser(den, 4.5)
    out = guided(x, t, cond={"emb": cond, "bias": None}, uncond={"emb": empty, "bias": None})
    assert den.batches == [10]  # one call on the doubled batch
    v_c, v_u = den(x, t, cond), den(x, t, empty)
    assert torch.equal(out, v_u + 4.5 * (v_c - v_u))

    # a negative prompt is just another uncond
    negative = torch.randn(5, 3, generator=g)
    out_neg = guided(x, t, cond={"emb": cond}, uncond={"emb": negative})
    v_n = den(x, t, negative)
    assert torch.equal(out_neg, v_n + 4.5 * (v_c - v_n))
    assert not torch.equal(out_neg, out)


def test_cfg_scale_one_calls_cond_only():
    x, t, cond = torch.randn(2, 4), torch.rand(2), torch.randn(2, 3)
    den = CountingDenoiser()
    out = cfg_denoiser(den, 1.0)(x, t, cond={"emb": cond}, uncond={"emb": torch.zeros(2, 3)})
    assert den.batches == [2]
    assert torch.equal(out, den(x, t, cond))
    assert torch.equal(cfg_denoiser(den, 1.0)(x, t, cond={"emb": cond}), out)  # no uncond needed


def test_cfg_inside_a_sampler():
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    den = CountingDenoiser()
    guided = cfg_denoiser(den, 3.0)
    args = {"cond": {"emb": torch.ones(2, 3)}, "uncond": {"emb": torch.zeros(2, 3)}}
    out = sample_euler(guided, x, flow_times(4), extra_args=args)
    assert den.batches == [4, 4, 4, 4] and out.shape == (2, 4)


def test_cfg_rejects_mismatched_conditioning():
    den = CountingDenoiser()
    guided = cfg_denoiser(den, 2.0)
    x, t = torch.zeros(1, 4), torch.zeros(1)
    with pytest.raises(ValueError, match="same keys"):
        guided(x, t, cond={"emb": torch.zeros(1, 3)}, uncond={"other": torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="uncond"):
        guided(x, t, cond={"emb": torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="bias"):
        guided(
            x,
            t,
            cond={"emb": torch.zeros(1, 3), "bias": 1.0},
            uncond={"emb": torch.zeros(1, 3), "bias": 2.0},
        )
