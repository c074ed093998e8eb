"""Stateless samplers for the rectified-flow ODE, and classifier-free guidance.

Flow convention (see :mod:`tinysora.diffusion.flow`): ``x_t = (1 - t) x0 + t noise``,
``t = 1`` is pure noise, and the model predicts the velocity ``v = noise - x0``, so
sampling integrates the ODE ``dx/dt = v(x, t)`` from ``t = times[0]`` (usually 1)
down to ``t = times[-1]`` (usually 0). The data prediction at any point is
``x0_hat = x - t * v``.

A *denoiser* is any callable ``denoiser(x, t, **extra_args) -> v``: ``x`` is
``(B, ...)``, ``t`` a ``(B,)`` tensor of flow times (all equal to the current step's
time, in ``x``'s dtype and device), and ``v`` has ``x``'s shape. The samplers pass
``extra_args`` (a dict, default ``{}``) unchanged as keyword arguments on every
call; that is how text tokens, masks or, through :func:`cfg_denoiser`, the
``cond=`` / ``uncond=`` dicts reach the model.

Samplers are plain functions in the style of k-diffusion::

    x = sample_euler(denoiser, x, times, extra_args=None, callback=None)

They are deterministic ODE solvers: no randomness inside, no scheduler object, no
step index kept anywhere. The caller draws the starting noise with its own
``torch.Generator`` and chooses ``times`` (e.g. :func:`flow_times`). After each step
``i`` the optional ``callback`` receives a dict with ``"i"``, ``"t"`` (``times[i]``),
``"x"`` (the state at ``times[i]`` the step started from), ``"denoised"`` (the
``x0_hat`` predicted there) and ``"t_next"`` / ``"x_next"`` (the new state); it is
called exactly ``len(times) - 1`` times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from tinysora.diffusion import SAMPLER_NAMES
from tinysora.diffusion.flow import apply_shift

__all__ = [
    "SAMPLERS",
    "Denoiser",
    "cfg_denoiser",
    "flow_times",
    "get_sampler",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
]

Denoiser = Callable[..., torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def flow_times(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """``num_steps + 1`` flow times from 1.0 down to 0.0 (float64).

    ``times[i] = apply_shift(1 - i / num_steps, shift)`` with
    ``apply_shift(t, s) = s t / (1 + (s - 1) t)``: ``shift > 1`` spends more steps
    near ``t = 1`` (high noise), as large / long videos need. The ends stay exactly
    1.0 and 0.0. For SDEdit-style partial denoising keep only the tail,
    e.g. ``times[times <= strength]`` (after prepending ``strength`` if wanted).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)  # (num_steps + 1,)
    t = apply_shift(t, float(shift))
    t[0], t[-1] = 1.0, 0.0  # exact ends (the formula fixes them up to rounding)
    return t


# ----------------------------------------------------------------------------- helpers


def _as_times(times: torch.Tensor | Sequence[float], *, decreasing: bool) -> list[float]:
    """``times`` as a list of Python floats, checked (step coefficients are computed in float64)."""
    ts = [float(v) for v in torch.as_tensor(times, dtype=torch.float64).reshape(-1).tolist()]
    if len(ts) < 2:
        raise ValueError(f"times needs at least 2 entries (one step), got {len(ts)}")
    if not all(math.isfinite(v) for v in ts):
        raise ValueError("times must be finite")
    if decreasing:
        if any(b >= a for a, b in zip(ts[:-1], ts[1:], strict=True)):
            raise ValueError("times must be strictly decreasing")
        if ts[0] > 1.0 or ts[-1] < 0.0:
            raise ValueError(f"times must lie in [0, 1], got {ts[0]} .. {ts[-1]}")
    return ts


def _t_batch(t: float, x: torch.Tensor) -> torch.Tensor:
    """The denoiser's time argument: ``t`` repeated for each sample, shape ``(B,)``."""
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)  # (B,)


def _emit(
    callback: Callback | None,
    i: int,
    t: float,
    x: torch.Tensor,
    denoised: torch.Tensor,
    t_next: float,
    x_next: torch.Tensor,
) -> None:
    """Report step ``i`` (from ``x`` at ``t`` to ``x_next`` at ``t_next``) to ``callback``."""
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "denoised": denoised, "t_next": t_next, "x_next": x_next})


# ----------------------------------------------------------------------------- samplers


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    times: torch.Tensor | Sequence[float],
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Euler's method (first order) on ``dx/dt = v(x, t)``.

    For ``i = 0 .. n-1`` with ``t_i = times[i]``::

        v_i     = denoiser(x_i, t_i)
        x_{i+1} = x_i + (t_{i+1} - t_i) * v_i

    In the flow parameterisation this is exactly DDIM (and DPM-Solver++ of order
    1): ``x_{i+1} = (t_{i+1}/t_i) x_i + (1 - t_{i+1}/t_i) x0_hat_i``. ``times`` may run
    in either direction (increasing times invert: data -> noise).
    """
    extra_args = {} if extra_args is None else extra_args
    ts = _as_times(times, decreasing=False)
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        v = denoiser(x, _t_batch(t, x), **extra_args)
        x_next = x + (t_next - t) * v
        _emit(callback, i, t, x, x - t * v, t_next, x_next)
        x = x_next
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    times: torch.Tensor | Sequence[float],
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Heun's method (explicit trapezoid, second order; two model calls per step).

    With ``dt = t_{i+1} - t_i``::

        v_i     = denoiser(x_i, t_i)
        x~      = x_i + dt * v_i                              (Euler predictor)
        x_{i+1} = x_i + dt * (v_i + denoiser(x~, t_{i+1})) / 2  (trapezoid corrector)

    A step that ends at ``t_{i+1} = 0`` is the plain Euler predictor (as in
    k-diffusion), so ``n`` steps to 0 cost ``2n - 1`` calls. The callback's
    ``"denoised"`` is the prediction at ``x_i``.
    """
    extra_args = {} if extra_args is None else extra_args
    ts = _as_times(times, decreasing=False)
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        dt = t_next - t
        v = denoiser(x, _t_batch(t, x), **extra_args)
        x_next = x + dt * v
        if t_next != 0.0:
            v_next = denoiser(x_next, _t_batch(t_next, x), **extra_args)
            x_next = x + dt * 0.5 * (v + v_next)
        _emit(callback, i, t, x, x - t * v, t_next, x_next)
        x = x_next
    return x


def _lambda(t: float) -> float:
    """Half log-SNR of the flow path: ``lambda(t) = log(alpha_t / sigma_t) = log((1 - t) / t)``."""
    if t >= 1.0:
        return -math.inf
    if t <= 0.0:
        return math.inf
    return math.log1p(-t) - math.log(t)


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: torch.Tensor,
    times: torch.Tensor | Sequence[float],
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): multistep second order in log-SNR, for the flow path.

    The flow path is a Gaussian path with ``alpha_t = 1 - t``, ``sigma_t = t``; let
    ``lambda_t = log(alpha_t / sigma_t) = log((1 - t) / t)`` and the data prediction
    ``D(x, t) = x - t * v(x, t)``. The ODE solved exactly in ``lambda`` (Lu et al.,
    2022) is::

        x_t = (sigma_t / sigma_s) x_s + sigma_t * integral_{lambda_s}^{lambda_t} e^lambda D dlambda

    and holding ``D`` constant over the step gives
    ``sigma_t (e^{lambda_t} - e^{lambda_s}) = alpha_t (1 - e^{-h}) = 1 - t/s``
    (``h = lambda_t - lambda_s``). So with ``s = t_i``, ``t = t_{i+1}``, ``D_i`` the
    prediction at ``x_i`` and ``h_i = lambda_{t_{i+1}} - lambda_{t_i}``, the update is::

        r_i     = h_{i-1} / h_i
        D'      = (1 + 1/(2 r_i)) D_i - (1/(2 r_i)) D_{i-1}      (linear in lambda)
        x_{i+1} = (t_{i+1} / t_i) x_i + (1 - t_{i+1} / t_i) D'

    With ``D' = D_i`` this is exactly the Euler / DDIM step. The first step (no
    ``D_{i-1}``) and the final step to ``t = 0`` (``h = inf``; it returns
    ``x_0 = D_i``) are first order; so is any step whose previous step started at
    ``t = 1``, since ``lambda_1 = -inf`` makes ``h_{i-1}`` infinite, ``1/r -> 0``.
    One model call per step. ``times`` must be strictly decreasing within ``[0, 1]``.
    """
    extra_args = {} if extra_args is None else extra_args
    ts = _as_times(times, decreasing=True)
    d_prev: torch.Tensor | None = None
    h_prev = math.inf
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        v = denoiser(x, _t_batch(t, x), **extra_args)
        denoised = x - t * v
        h = _lambda(t_next) - _lambda(t)
        if t_next == 0.0:
            x_next = denoised  # first order: (t_next / t) -> 0
        else:
            if d_prev is None or not math.isfinite(h_prev):
                d = denoised
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * d_prev
            ratio = t_next / t
            x_next = ratio * x + (1 - ratio) * d
        _emit(callback, i, t, x, denoised, t_next, x_next)
        d_prev, h_prev = denoised, h
        x = x_next
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = dict(
    zip(SAMPLER_NAMES, (sample_euler, sample_heun, sample_dpmpp_2m), strict=True)
)


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function called ``name``; ``ValueError`` listing the valid names otherwise."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}"
        ) from None


# ----------------------------------------------------------------------------- guidance


def cfg_denoiser(denoiser: Denoiser, guidance_scale: float) -> Denoiser:
    """Wrap ``denoiser`` with classifier-free guidance at scale ``s = guidance_scale``.

    The result is ``guided(x, t, cond: dict, uncond: dict | None = None) -> v`` with::

        v = v_uncond + s * (v_cond - v_uncond)

    computed by one call on the doubled batch: ``x`` and ``t`` are repeated to
    ``2B`` and every tensor in ``cond`` is concatenated along dim 0 with the tensor of
    the same key in ``uncond`` (cond first), so the two dicts need the same keys and
    shapes that match beyond dim 0 (pad text tokens to one length). A non-tensor value
    (e.g. ``None``, a flag) must be equal in both and is passed as is. A negative
    prompt is simply an ``uncond`` dict built from that prompt instead of ``""``.
    With ``s == 1`` only ``denoiser(x, t, **cond)`` is called, on the ``B`` batch, and
    ``uncond`` may be omitted. Samplers reach it through
    ``extra_args={"cond": {...}, "uncond": {...}}``.
    """
    scale = float(guidance_scale)

    def guided(
        x: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, Any],
        uncond: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        if scale == 1.0:
            return denoiser(x, t, **cond)
        if uncond is None:
            raise ValueError(f"guidance_scale={scale} needs an uncond dict")
        if set(cond) != set(uncond):
            raise ValueError(
                f"cond and uncond need the same keys, got {sorted(cond)} and {sorted(uncond)}"
            )
        kwargs: dict[str, Any] = {}
        for key, c in cond.items():
            u = uncond[key]
            if isinstance(c, torch.Tensor) and isinstance(u, torch.Tensor):
                kwargs[key] = torch.cat([c, u], dim=0)  # (2B, ...) cond rows first
            elif isinstance(c, torch.Tensor) or isinstance(u, torch.Tensor) or c != u:
                raise ValueError(f"cond[{key!r}] and uncond[{key!r}] must both be tensors or equal")
            else:
                kwargs[key] = c
        x2 = torch.cat([x, x], dim=0)  # (2B, ...)
        t2 = torch.cat([t, t], dim=0)  # (2B,) or (2B, N) for per-token times
        v_cond, v_uncond = denoiser(x2, t2, **kwargs).chunk(2, dim=0)  # (B, ...) each
        return v_uncond + scale * (v_cond - v_uncond)

    return guided
