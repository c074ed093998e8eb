"""Tests for the causal video VAE (tinysora.vae), its loss and the quality metrics.

Everything runs on a tiny random-init model in fp32, so the whole file takes seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tinysora.nn.metrics import psnr, ssim
from tinysora.vae.loss import VAELossConfig, edge_band, motion_band, vae_loss
from tinysora.vae.model import (
    Posterior,
    VAEConfig,
    VideoVAE,
    latent_frames,
    legal_num_frames,
    pad_frames,
)

TINY = dict(latent_channels=4, channels=(8, 8, 16), encoder_blocks=1, decoder_blocks=1)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vae(seed: int = 0, **overrides) -> VideoVAE:
    torch.manual_seed(seed)
    return VideoVAE(VAEConfig(**{**TINY, **overrides})).eval()


def clip(t: int, h: int = 16, w: int = 16, b: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def vae() -> VideoVAE:
    return tiny_vae()


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("t", "legal", "latent"),
    [(1, 1, 1), (2, 5, 2), (4, 5, 2), (5, 5, 2), (6, 9, 3), (9, 9, 3), (10, 13, 4), (17, 17, 5)],
)
def test_legal_num_frames_and_latent_frames(t, legal, latent):
    assert legal_num_frames(t) == legal
    assert latent_frames(t) == latent


def test_pad_frames_repeats_last_frame():
    x = clip(6)
    padded, t = pad_frames(x)
    assert t == 6
    assert padded.shape[2] == legal_num_frames(6) == 9
    assert torch.equal(padded[:, :, :6], x)
    for i in range(6, 9):
        assert torch.equal(padded[:, :, i], x[:, :, 5])
    same, t = pad_frames(clip(9))
    assert t == 9 and same.shape[2] == 9


# ----------------------------------------------------------------------------- shapes


@torch.no_grad()
@pytest.mark.parametrize(("t", "lt"), [(1, 1), (5, 2), (9, 3), (17, 5)])
def test_encode_decode_shapes(vae, t, lt):
    x = clip(t, 16, 32, b=2)  # non-square
    post = vae.encode(x)
    assert post.mean.shape == (2, 4, lt, 2, 4)
    assert post.logvar.shape == post.mean.shape
    y = vae.decode(post.mean)
    assert y.shape == x.shape
    recon, post2 = vae(x, torch.Generator().manual_seed(0))
    assert recon.shape == x.shape
    assert post2.mean.shape == post.mean.shape


@torch.no_grad()
def test_square_32_shapes():
    vae = tiny_vae(latent_channels=8)
    assert vae.encode(clip(5, 32, 32)).mean.shape == (1, 8, 2, 4, 4)


def test_latent_channels_must_divide_the_widest_stage():
    with pytest.raises(ValueError, match="multiple of latent_channels"):
        tiny_vae(latent_channels=6)


@torch.no_grad()
@pytest.mark.parametrize("t", [6, 10])
def test_illegal_frame_count_is_padded_and_cropped(vae, t):
    x = clip(t)
    post = vae.encode(x)
    assert post.mean.shape[2] == latent_frames(t)
    # the padding is "repeat the last frame": same latents as an explicitly padded clip
    padded, _ = pad_frames(x)
    assert max_err(vae.encode(padded).mean, post.mean) <= 1e-6
    y = vae.decode(post.mean, num_frames=t)
    assert y.shape == x.shape
    assert vae.decode(post.mean).shape[2] == legal_num_frames(t)
    recon, _ = vae(x)
    assert recon.shape == x.shape


# ----------------------------------------------------------------------------- bad input


@torch.no_grad()
@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((1, 4, 5, 16, 16), "(B, 3, T, H, W)"),
        ((3, 5, 16, 16), "(B, 3, T, H, W)"),
        ((1, 3, 5, 20, 16), "multiples of 8"),
        ((1, 3, 5, 16, 12), "multiples of 8"),
    ],
)
def test_bad_input_raises_clear_value_error(vae, shape, words):
    with pytest.raises(ValueError) as info:
        vae.encode(torch.zeros(shape))
    message = str(info.value)
    assert words in message
    assert "\n" not in message


@torch.no_grad()
def test_chunk_frames_not_multiple_of_4_raises(vae):
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode(clip(33), chunk_frames=6)


# ----------------------------------------------------------------------------- chunking


@pytest.fixture(scope="module")
def long_clip(vae):
    x = clip(33, b=2, seed=7)
    with torch.no_grad():
        post = vae.encode(x)
        y = vae.decode(post.mean)
    return x, post, y


@torch.no_grad()
@pytest.mark.parametrize("chunk", [4, 8])
def test_chunked_encode_equals_whole(vae, long_clip, chunk):
    x, post, _ = long_clip
    chunked = vae.encode(x, chunk_frames=chunk)
    assert max_err(chunked.mean, post.mean) <= 1e-4
    assert max_err(chunked.logvar, post.logvar) <= 1e-4


@torch.no_grad()
def test_chunked_encode_of_illegal_length(vae):
    x = clip(14, seed=3)  # padded to 17: chunks of 1 + 8, then 8
    assert max_err(vae.encode(x, chunk_frames=8).mean, vae.encode(x).mean) <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("chunk", [1, 2, 3, 4])  # 9 latents: 3 and 4 split unevenly
def test_chunked_decode_equals_whole(vae, long_clip, chunk):
    _, post, y = long_clip
    out = vae.decode(post.mean, chunk_latents=chunk)
    assert max_err(out, y) <= 1e-4
    cropped = vae.decode(post.mean, num_frames=30, chunk_latents=chunk)
    assert max_err(cropped, y[:, :, :30]) <= 1e-4


# ----------------------------------------------------------------------------- causality


@torch.no_grad()
def test_encoder_is_causal(vae, long_clip):
    x, post, _ = long_clip
    g = torch.Generator().manual_seed(11)
    for i in range(0, 33, 2):
        changed = x.clone()
        changed[:, :, i + 1 :] = torch.rand(changed[:, :, i + 1 :].shape, generator=g) * 2 - 1
        mean = vae.encode(changed).mean
        # latent l covers frames 4l-3 .. 4l (latent 0 = frame 0): frames <= i fix l <= i // 4
        done = i // 4 + 1
        assert max_err(mean[:, :, :done], post.mean[:, :, :done]) <= 1e-5, i
        if done < mean.shape[2]:  # ... and the later ones do see the change
            assert max_err(mean[:, :, done:], post.mean[:, :, done:]) > 1e-4, i


@torch.no_grad()
def test_frame_groups_map_to_latents(vae, long_clip):
    """Frame 0 -> latent 0; frames 1..4 -> latent 1; frames 5..8 -> latent 2."""
    x, post, _ = long_clip
    for frame, latent in [(0, 0), (1, 1), (4, 1), (5, 2), (8, 2)]:
        changed = x.clone()
        changed[:, :, frame] = -changed[:, :, frame]
        mean = vae.encode(changed).mean
        if latent:
            assert max_err(mean[:, :, :latent], post.mean[:, :, :latent]) <= 1e-5
        assert max_err(mean[:, :, latent], post.mean[:, :, latent]) > 1e-4


@torch.no_grad()
def test_image_is_a_one_frame_video(vae, long_clip):
    x, post, y = long_clip
    image = vae.encode(x[:, :, :1])
    assert image.mean.shape[2] == 1
    assert max_err(image.mean[:, :, 0], post.mean[:, :, 0]) <= 1e-5
    assert max_err(image.logvar[:, :, 0], post.logvar[:, :, 0]) <= 1e-5
    assert max_err(vae.decode(post.mean[:, :, :1])[:, :, 0], y[:, :, 0]) <= 1e-5


@torch.no_grad()
def test_decoder_is_causal(vae, long_clip):
    _, post, y = long_clip
    z = post.mean
    g = torch.Generator().manual_seed(12)
    for latent in range(z.shape[2]):
        changed = z.clone()
        changed[:, :, latent + 1 :] = torch.randn(changed[:, :, latent + 1 :].shape, generator=g)
        out = vae.decode(changed)
        fixed = 1 + 4 * latent  # output frames 0 .. 4 * latent use latents <= latent only
        assert max_err(out[:, :, :fixed], y[:, :, :fixed]) <= 1e-5, latent
        if latent + 1 < z.shape[2]:
            assert max_err(out[:, :, fixed : fixed + 4], y[:, :, fixed : fixed + 4]) > 1e-4


# ----------------------------------------------------------------------------- latents


def test_normalize_denormalize_roundtrip():
    vae = tiny_vae(scaling_factor=2.5, shift_factor=-0.3)
    z = torch.randn(2, 4, 3, 2, 2)
    n = vae.normalize(z)
    assert torch.allclose(n, (z + 0.3) * 2.5, atol=1e-6)
    assert torch.allclose(vae.denormalize(n), z, atol=1e-6)
    assert torch.allclose(vae.normalize(vae.denormalize(z)), z, atol=1e-5)


def test_posterior_kl_and_sampling():
    zero = Posterior(torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2))
    assert float(zero.kl()) == 0.0
    shifted = Posterior(torch.full((1, 4, 2, 2, 2), 0.5), torch.zeros(1, 4, 2, 2, 2))
    assert float(shifted.kl()) == pytest.approx(0.125)  # 0.5 * mean^2
    narrow = Posterior(torch.zeros(1, 4, 2, 2, 2), torch.full((1, 4, 2, 2, 2), -1.0))
    assert float(narrow.kl()) > 0

    post = Posterior(torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2) * 0.1)
    a = post.sample(torch.Generator().manual_seed(5))
    b = post.sample(torch.Generator().manual_seed(5))
    c = post.sample(torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == post.mean.shape
    tight = Posterior(post.mean, torch.full_like(post.mean, -30.0))
    assert torch.allclose(tight.sample(torch.Generator().manual_seed(0)), post.mean, atol=1e-5)


def test_forward_with_seeded_generator_is_reproducible(vae):
    x = clip(5)
    with torch.no_grad():
        a, _ = vae(x, torch.Generator().manual_seed(3))
        b, _ = vae(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- learning


def test_overfit_one_batch_reduces_loss():
    """Gradients reach every part of the model: 30 Adam steps on one clip cut the loss."""
    vae = tiny_vae(seed=0).train()
    ramp = torch.linspace(-1, 1, 16)
    x = ramp.view(1, 1, 1, 1, 16).expand(1, 3, 5, 16, 16).clone()
    x[:, 1] = ramp.view(1, 1, 16, 1)  # green varies down, red/blue across
    x[:, :, 3:] *= 0.5  # and something changes in time
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    cfg = VAELossConfig()
    losses = []
    for step in range(30):
        recon, post = vae(x, g)
        loss, parts = vae_loss(recon, x, post, cfg)
        assert set(parts) == {"l1", "mse", "grad", "kl"}
        opt.zero_grad()
        loss.backward()
        if step == 0:
            no_grad = [n for n, p in vae.named_parameters() if p.grad is None]
            assert not no_grad, no_grad
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses


def test_vae_loss_of_perfect_reconstruction():
    x = clip(5)
    post = Posterior(torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 4, 2, 2, 2))
    loss, parts = vae_loss(x, x, post, VAELossConfig(ssim_weight=0.5))
    assert parts["l1"] == 0.0 and parts["mse"] == 0.0 and parts["grad"] == 0.0
    assert parts["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert float(loss) == pytest.approx(0.0, abs=1e-5)
    worse, _ = vae_loss(-x, x, post, VAELossConfig())
    assert float(worse) > 0.5


def test_edge_band_marks_one_pixel_around_edges():
    x = -torch.ones(1, 3, 2, 12, 12)
    x[:, :, :, 4:8, 4:8] = 1.0  # a 4x4 square
    band = edge_band(x, 0.05)
    assert band.shape == (1, 1, 2, 12, 12)
    # edge pixels: both sides of each boundary (rows/cols 3, 4, 7, 8 along the sides);
    # dilated by 1 -> the 8x8 block 2..9, less its 4 corners (2 px from any edge pixel)
    expected = torch.zeros(12, 12)
    expected[2:10, 2:10] = 1
    expected[2, 2] = expected[2, 9] = expected[9, 2] = expected[9, 9] = 0
    assert torch.equal(band[0, 0, 0], expected) and torch.equal(band[0, 0, 1], expected)
    assert band.sum() < band.numel()  # flat background is outside


def test_edge_weight_raises_the_loss_of_errors_at_edges_only():
    x = -torch.ones(1, 3, 1, 16, 16)
    x[:, :, :, 6:10, 6:10] = 1.0
    post = Posterior(torch.zeros(1, 4, 1, 2, 2), torch.zeros(1, 4, 1, 2, 2))
    at_edge, far = x.clone(), x.clone()
    at_edge[:, :, :, 6, 6] = 0.0  # a corner pixel of the square
    far[:, :, :, 0, 15] = 0.0  # a background corner
    weighted = VAELossConfig(edge_weight=8.0, gradient_weight=0.0)
    plain = VAELossConfig(gradient_weight=0.0)
    l_edge, _ = vae_loss(at_edge, x, post, weighted)
    l_far, _ = vae_loss(far, x, post, weighted)
    assert float(l_edge) == pytest.approx(9 * float(l_far), rel=1e-4)
    assert float(vae_loss(at_edge, x, post, plain)[0]) == pytest.approx(float(l_far), rel=1e-4)


def moving_square(t: int = 3) -> torch.Tensor:
    """A 2x2 square stepping 4 px right per frame on a 16x16 background."""
    x = -torch.ones(1, 3, t, 16, 16)
    for i in range(t):
        x[:, :, i, 6:8, 2 + 4 * i : 4 + 4 * i] = 1.0
    return x


def test_motion_band_marks_where_an_object_was_and_went():
    x = moving_square()
    band = motion_band(x, 0.05)
    assert band.shape == (1, 1, 3, 16, 16)
    # frame 1 changed from frame 0 (square left 2..3 and arrived 6..7) and towards frame 2
    # (left 6..7, arrives 10..11): rows 6..7 +-1, those columns +-1
    expected = torch.zeros(16, 16)
    expected[5:9, 1:13] = 1
    assert torch.equal(band[0, 0, 1], expected)
    assert band[0, 0, 0, 7, 12] == 0 and band[0, 0, 0, 7, 3] == 1  # frame 0: only 0->1 moves
    still = x[:, :, :1].expand(-1, -1, 3, -1, -1)
    assert motion_band(still, 0.05).sum() == 0 and motion_band(x[:, :, :1], 0.05).sum() == 0


def test_motion_weight_raises_errors_on_moving_pixels_and_temporal_term_sees_flicker():
    x = moving_square()
    post = Posterior(torch.zeros(1, 4, 1, 2, 2), torch.zeros(1, 4, 1, 2, 2))
    moving, still = x.clone(), x.clone()
    moving[:, :, 1, 7, 6] = 0.0  # a pixel of the square where it arrived
    still[:, :, 1, 15, 15] = 0.0  # a background pixel nothing passes
    weighted = VAELossConfig(motion_weight=8.0, gradient_weight=0.0)
    l_moving, _ = vae_loss(moving, x, post, weighted)
    l_still, _ = vae_loss(still, x, post, weighted)
    assert float(l_moving) == pytest.approx(9 * float(l_still), rel=1e-4)
    # an error constant over time has no frame-to-frame part; one frame's error has
    steady = x + 0.1
    flicker = x.clone()
    flicker[:, :, 1] += 0.1
    temporal = VAELossConfig(temporal_weight=1.0)
    assert vae_loss(steady, x, post, temporal)[1]["temporal"] == pytest.approx(0.0, abs=1e-7)
    assert vae_loss(flicker, x, post, temporal)[1]["temporal"] > 0.05


# ----------------------------------------------------------------------------- metrics


def uint8_clip(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(25, 230, (3, 24, 24, 3)).astype(np.uint8)


def test_psnr_identical_is_inf():
    a = uint8_clip()
    assert psnr(a, a.copy()) == math.inf
    t = torch.rand(2, 3, 16, 16)
    assert psnr(t, t.clone()) == math.inf


@pytest.mark.parametrize("d", [1, 5, 20])
def test_psnr_of_known_perturbation(d):
    a = uint8_clip()
    signs = np.where(np.random.default_rng(1).random(a.shape) < 0.5, -d, d)
    b = (a.astype(np.int16) + signs).astype(np.uint8)
    expected = 10 * math.log10(1 / (d / 255) ** 2)
    assert psnr(a, b) == pytest.approx(expected, abs=1e-4)
    assert psnr(b, a) == pytest.approx(expected, abs=1e-4)


def test_psnr_of_tensors():
    t = torch.rand(2, 3, 16, 16) * 0.8
    assert psnr(t, t + 0.1) == pytest.approx(20.0, abs=1e-3)


def test_ssim_identical_is_one_and_drops_with_noise():
    a = uint8_clip()
    assert ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-6)
    t = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    assert ssim(t, t.clone()) == pytest.approx(1.0, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(t.shape, generator=g)
    scores = [ssim(t, (t + s * noise).clamp(0, 1)) for s in (0.02, 0.1, 0.3)]
    assert 1.0 > scores[0] > scores[1] > scores[2], scores
