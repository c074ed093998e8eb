"""Tests for tinysora.diffusion.flow: noising, velocity target, masked loss, timesteps."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import assert_close_fp32

from tinysora.config import ConfigError
from tinysora.diffusion.flow import (
    FlowConfig,
    add_noise,
    apply_shift,
    drop_captions,
    expand_t,
    flow_loss,
    sample_timesteps,
    timestep_shift,
    velocity_target,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- noising


def test_add_noise_endpoints_and_midpoint():
    x0 = torch.randn(3, 5, 4, generator=gen(0))  # (B, N, D)
    noise = torch.randn(3, 5, 4, generator=gen(1))
    assert torch.equal(add_noise(x0, torch.zeros(3), noise), x0)
    assert torch.equal(add_noise(x0, torch.ones(3), noise), noise)
    torch.testing.assert_close(add_noise(x0, 0.5, noise), (x0 + noise) / 2)
    t = torch.tensor([0.0, 0.25, 1.0])
    xt = add_noise(x0, t, noise)
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * noise[1])


def test_add_noise_per_token_times():
    x0 = torch.randn(2, 6, 3, generator=gen(0))  # (B, N, D)
    noise = torch.randn(2, 6, 3, generator=gen(1))
    t = torch.rand(2, 6, generator=gen(2))  # (B, N)
    t[:, :2] = 0.0  # first two tokens are clean conditioning
    xt = add_noise(x0, t, noise)
    assert xt.shape == x0.shape
    assert torch.equal(xt[:, :2], x0[:, :2])
    torch.testing.assert_close(xt, (1 - t[..., None]) * x0 + t[..., None] * noise)
    # also for video-shaped latents (B, C, T, H, W) with one t per sample
    v0, vn = torch.zeros(2, 4, 3, 2, 2), torch.ones(2, 4, 3, 2, 2)
    out = add_noise(v0, torch.tensor([0.2, 0.7]), vn)
    torch.testing.assert_close(out[0], torch.full((4, 3, 2, 2), 0.2))
    torch.testing.assert_close(out[1], torch.full((4, 3, 2, 2), 0.7))


def test_expand_t_shapes():
    x = torch.zeros(2, 6, 3)
    assert expand_t(torch.zeros(2), x).shape == (2, 1, 1)
    assert expand_t(torch.zeros(2, 6), x).shape == (2, 6, 1)
    assert expand_t(0.3, x).shape == (1, 1, 1)
    assert expand_t(torch.zeros(2), x.double()).dtype == torch.float64
    with pytest.raises(ValueError):
        expand_t(torch.zeros(2, 6, 3, 1), x)


def test_velocity_target_is_the_path_derivative():
    x0 = torch.randn(2, 3, 4, generator=gen(0))
    noise = torch.randn(2, 3, 4, generator=gen(1))
    v = velocity_target(x0, noise)
    assert torch.equal(v, noise - x0)
    t, h = torch.full((2,), 0.4), 1e-3
    dxdt = (add_noise(x0, t + h, noise) - add_noise(x0, t - h, noise)) / (2 * h)
    torch.testing.assert_close(dxdt, v, atol=1e-3, rtol=0)
    xt = add_noise(x0, t, noise)
    torch.testing.assert_close(xt - 0.4 * v, x0)  # x0 = x_t - t v


# ----------------------------------------------------------------------------- loss


def test_flow_loss_unmasked_is_mse():
    pred = torch.randn(3, 5, 4, generator=gen(0))
    target = torch.randn(3, 5, 4, generator=gen(1))
    torch.testing.assert_close(flow_loss(pred, target), ((pred - target) ** 2).mean())
    assert flow_loss(target, target).item() == 0.0


def test_flow_loss_masked_matches_manual_and_survives_empty_rows():
    pred = torch.randn(3, 5, 4, generator=gen(0))
    target = torch.randn(3, 5, 4, generator=gen(1))
    mask = torch.tensor(
        [
            [True, True, False, False, True],
            [False, False, False, False, False],  # nothing trained in this row
            [True, True, True, True, True],
        ]
    )
    loss = flow_loss(pred, target, mask)
    assert torch.isfinite(loss)
    err = ((pred - target) ** 2).mean(-1)  # (B, N)
    row0 = err[0, [0, 1, 4]].mean()
    row2 = err[2].mean()
    torch.testing.assert_close(loss, (row0 + 0.0 + row2) / 3)
    # masked-out tokens do not matter, whatever their values
    pred2 = pred.clone()
    pred2[0, 2:4] = 1e6
    pred2[1] = 1e6
    torch.testing.assert_close(flow_loss(pred2, target, mask), loss)
    # a batch without any trained token gives 0, not NaN, and a finite gradient
    p = pred.clone().requires_grad_(True)
    zero = flow_loss(p, target, torch.zeros(3, 5, dtype=torch.bool))
    zero.backward()
    assert zero.item() == 0.0 and torch.all(p.grad == 0)


def test_flow_loss_checks_shapes():
    with pytest.raises(ValueError):
        flow_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError):
        flow_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))


# ----------------------------------------------------------------------------- timesteps


def test_timestep_shift_grows_with_tokens_and_is_clamped():
    cfg = FlowConfig()
    assert timestep_shift(80, cfg) == 1.0
    assert timestep_shift(10, cfg) == 1.0  # clamped below at 1
    assert timestep_shift(320, cfg) == pytest.approx(2.0)
    assert timestep_shift(10**6, cfg) == cfg.max_shift  # clamped above
    values = [timestep_shift(n, cfg) for n in [80, 160, 320, 640, 1280]]
    assert all(b > a for a, b in zip(values[:-1], values[1:], strict=True))
    assert timestep_shift(80, FlowConfig(base_shift=1.5)) == pytest.approx(1.5)


def test_apply_shift_is_monotone_and_fixes_the_ends():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for shift in [1.0, 2.0, 3.0, 4.0]:
        ts = apply_shift(t, shift)
        assert ts[0].item() == 0.0 and ts[-1].item() == 1.0
        assert torch.all(ts[1:] > ts[:-1])
        assert torch.all(ts >= t - 1e-12)
    torch.testing.assert_close(apply_shift(t, 1.0), t)
    assert apply_shift(0.5, 3.0) == pytest.approx(0.75)
    # equivalent to dividing the signal-to-noise ratio (1 - t) / t by the shift
    mid = t[1:-1]
    snr = (1 - apply_shift(mid, 3.0)) / apply_shift(mid, 3.0)
    torch.testing.assert_close(snr, (1 - mid) / mid / 3.0)


def test_sample_timesteps_range_and_determinism():
    cfg = FlowConfig()
    t = sample_timesteps(4096, 80, cfg, gen(0))
    assert t.shape == (4096,)
    assert torch.all(t > 0) and torch.all(t < 1)
    assert torch.equal(t, sample_timesteps(4096, 80, cfg, gen(0)))
    assert not torch.equal(t, sample_timesteps(4096, 80, cfg, gen(1)))
    # logit-normal around 0.5 without shift
    assert abs(t.median().item() - 0.5) < 0.03


def test_uniform_fraction_reaches_the_noise_end():
    n = 20_000
    logit_only = sample_timesteps(n, 80, FlowConfig(uniform_fraction=0.0), gen(0))
    mixed = sample_timesteps(n, 80, FlowConfig(uniform_fraction=0.5), gen(0))
    # P(sigmoid(N(0,1)) > 0.95) = P(N > 2.94) ~ 0.0016; uniform adds 0.5 * 0.05 = 0.025
    frac_logit = (logit_only > 0.95).float().mean().item()
    frac_mixed = (mixed > 0.95).float().mean().item()
    assert frac_logit < 0.005
    assert 0.018 < frac_mixed < 0.035
    default = sample_timesteps(n, 80, FlowConfig(), gen(0))
    assert (default > 0.95).float().mean().item() > 0.004


def test_shift_moves_mass_towards_noise():
    cfg = FlowConfig()
    base = sample_timesteps(8192, 80, cfg, gen(0))
    shifted = sample_timesteps(8192, 80 * 9, cfg, gen(0))  # shift 3
    assert shifted.mean() > base.mean() + 0.1
    assert_close_fp32(shifted, apply_shift(base, 3.0))  # tensor sqrt vs math.sqrt shift
    # per-sample token counts (packed batches): each row gets its own shift
    counts = torch.tensor([80, 80 * 9] * 4)
    per_sample = sample_timesteps(8, counts, cfg, gen(5))
    same = sample_timesteps(8, 80, cfg, gen(5))
    torch.testing.assert_close(per_sample[0::2], same[0::2])
    assert_close_fp32(per_sample[1::2], apply_shift(same[1::2], 3.0))


# ----------------------------------------------------------------------------- captions & config


def test_drop_captions_rate_and_determinism():
    prompts = [f"a red circle moving left {i}" for i in range(4000)]
    out = drop_captions(prompts, 0.1, gen(0))
    assert len(out) == len(prompts)
    dropped = sum(o == "" for o in out)
    assert abs(dropped / len(prompts) - 0.1) < 0.02
    assert all(o in ("", p) for o, p in zip(out, prompts, strict=True))
    assert out == drop_captions(prompts, 0.1, gen(0))
    assert drop_captions(prompts[:50], 0.0, gen(0)) == prompts[:50]
    assert drop_captions(prompts[:50], 1.0, gen(0)) == [""] * 50
    assert drop_captions([], 0.5, gen(0)) == []
    with pytest.raises(ValueError):
        drop_captions(prompts, 1.5, gen(0))


def test_flow_config_json_round_trip(tmp_path):
    cfg = FlowConfig(logit_mean=-0.5, logit_std=1.2, uniform_fraction=0.2, max_shift=3.0)
    assert FlowConfig.from_json(cfg.to_json()) == cfg
    path = cfg.save(tmp_path / "flow" / "config.json")
    assert FlowConfig.load(path) == cfg
    assert FlowConfig.from_dict({"base_shift": 2}).base_shift == 2.0
    with pytest.raises(ConfigError, match="logit_sdt"):
        FlowConfig.from_dict({"logit_sdt": 1.0})
    with pytest.raises(ConfigError, match="uniform_fraction"):
        FlowConfig(uniform_fraction=1.5)
    assert math.isfinite(timestep_shift(1, cfg))


def test_videofusion_noise_shares_a_base_across_frames():
    from tinysora.diffusion.flow import FlowConfig, draw_noise
    from tinysora.pipeline import PipelineConfig

    shape = (64, 4, 5, 8, 8)
    plain = draw_noise(shape, torch.Generator().manual_seed(1))
    assert torch.equal(plain, torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    noise = draw_noise(shape, torch.Generator().manual_seed(1), shared=0.8)
    assert abs(float(noise.std()) - 1) < 0.02  # still unit variance per element
    frames = noise.permute(2, 0, 1, 3, 4).reshape(5, -1)  # (T, everything else)
    corr = torch.corrcoef(frames)
    off = corr[~torch.eye(5, dtype=bool)]
    assert abs(float(off.mean()) - 0.8) < 0.02  # frames share 80% of their noise
    clips = noise[:, :, 0].reshape(64, -1)
    assert abs(float(torch.corrcoef(clips[:2])[0, 1])) < 0.15  # clips do not
    flow = FlowConfig(shared_noise=0.5)
    assert PipelineConfig().with_shift_of(flow).shared_noise == 0.5
    with pytest.raises(ConfigError, match="shared_noise"):
        FlowConfig(shared_noise=1.0)
