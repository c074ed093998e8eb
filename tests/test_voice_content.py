"""The content encoder, k-means, the residual VQ and the staged training run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONTENT_RECIPE
from numerics import assert_close_fp32

from tinysora.io.checkpoint import load_pretrained, load_tensors
from tinysora.voice.content import (
    CodecConfig,
    ContentConfig,
    ContentEncoder,
    ContentModel,
    SemanticCodec,
    VectorQuantizer,
    kmeans,
    mfcc,
    nearest,
    perplexity,
    span_mask,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = torch.cat([c + 0.3 * torch.randn(200, 2, generator=g) for c in centres])
    found = kmeans(x, 4, generator=torch.Generator().manual_seed(1))
    dist = torch.cdist(found, centres).min(dim=1).values
    assert (dist < 0.2).all()
    assign, _ = nearest(x, found)
    assert len(set(assign.view(4, 200).mode(dim=1).values.tolist())) == 4


def test_span_mask_rate_and_determinism():
    a = span_mask((8, 500), 0.065, 10, torch.Generator().manual_seed(3))
    b = span_mask((8, 500), 0.065, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert 0.3 < a.float().mean() < 0.7  # HuBERT's setting masks about half the frames


def test_encoder_ignores_padding_and_mfcc_shape():
    torch.manual_seed(0)
    model = ContentEncoder(ContentConfig(dim=32, layers=2, heads=2, n_units=10)).eval()
    mel = torch.randn(1, 80, 40)
    alone, logits = model(mel)
    assert alone.shape == (1, 40, 32) and logits.shape == (1, 40, 10)
    padded = torch.cat([mel, torch.randn(1, 80, 15)], dim=2)
    batch = torch.cat([padded, torch.randn(1, 80, 55)])
    together, _ = model(batch, torch.tensor([40, 55]))
    assert_close_fp32(together[0, :40], alone[0])
    assert mfcc(mel).shape == (1, 39, 40)


def test_vq_ema_moves_codes_and_restarts_dead_ones():
    g = torch.Generator().manual_seed(0)
    vq = VectorQuantizer(size=8, dim=4, decay=0.9, dead_threshold=0.03)
    data = torch.randn(256, 4, generator=g)
    vq.init_from(data, g)
    before = vq.codebook.clone()
    vq.train()
    shifted = data + 5.0  # a new distribution far from every code
    for _ in range(60):
        q, codes = vq(shifted, g)
    assert q.shape == shifted.shape and codes.shape == (256,)
    err_before = nearest(shifted, before)[1].mean()
    err_after = nearest(shifted, vq.codebook)[1].mean()
    assert err_after < 0.5 * err_before
    assert perplexity(torch.arange(8).repeat(10), 8) == pytest.approx(8.0, rel=1e-5)


def test_codec_shapes_and_straight_through():
    codec = SemanticCodec(CodecConfig(dim=16, code_dim=8, codebook_size=16, n_quantizers=2))
    x = torch.randn(2, 21, 16, requires_grad=True)
    for vq in codec.quantizers:
        vq.init_from(torch.randn(100, 8), torch.Generator().manual_seed(0))
    recon, codes, commit = codec(x)
    assert recon.shape == (2, 20, 16) and codes.shape == (2, 2, 10)
    assert codec.embed(codes).shape == (2, 10, 8)
    (recon.sum() + commit).backward()
    assert x.grad is not None and codec.down.weight.grad.abs().sum() > 0


def _write_recipe(tmp: Path, corpus: Path, steps: int, codec_steps: int) -> Path:
    path = tmp / "recipe.toml"
    path.write_text(TINY_CONTENT_RECIPE.format(corpus=corpus, steps=steps, codec_steps=codec_steps))
    return path


def test_train_voice_content_end_to_end(tiny_content):
    from tinysora.train.voice_content import train_voice_content

    out = tiny_content
    recipe = out.parent / "recipe.toml"
    model_dir = out / "content"
    probes = json.loads((out / "probes.json").read_text())
    assert 0 <= probes["phone_accuracy"] <= 1 and probes["codebook_size"] == 64
    assert probes["voices"] >= 40 and probes["chance"] == pytest.approx(1 / probes["voices"])
    assert 1 <= probes["perplexity"] <= 64
    model = load_pretrained(ContentModel, model_dir)
    mel = torch.randn(1, 80, 60)
    codes = model.codes(mel)
    assert codes.shape == (1, 1, 30) and codes.max() < 64
    # stage 5b ran: the refined encoder is the one exported, and it moved from iteration 2
    refined = load_tensors(out / "refine" / "encoder.safetensors")
    iter2 = load_tensors(out / "iter2" / "encoder.safetensors")
    assert torch.equal(model.encoder.state_dict()["inp.weight"], refined["inp.weight"])
    assert not torch.equal(refined["inp.weight"], iter2["inp.weight"])
    logged = [json.loads(line) for line in (out / "refine" / "log.jsonl").read_text().splitlines()]
    assert any("ctc" in r and "speaker_acc" in r for r in logged)
    # a finished run resumes as a no-op: no stage is redone
    stamp = (out / "units2.safetensors").stat().st_mtime_ns
    train_voice_content(recipe, out, resume=True)
    assert (out / "units2.safetensors").stat().st_mtime_ns == stamp
    assert torch.equal(load_pretrained(ContentModel, model_dir).codes(mel), codes)


@pytest.mark.slow
def test_train_voice_content_resumes_after_kill(tiny_corpus, tmp_path):
    """kill -9 a real training process in iteration 1, then --resume finishes the run
    (slow: the stages use the shared Trainer, whose kill -9 resume tests/test_resume.py
    covers in make test)."""
    recipe = _write_recipe(tmp_path, tiny_corpus, steps=40, codec_steps=10)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "tinysora",
        "train",
        "voice-content",
        "--config",
        str(recipe),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "iter1" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert latest.exists(), "no checkpoint before the kill"
    step = int(latest.read_text().strip().split("_")[1])
    assert 0 < step < 40
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "content" / "model.safetensors").is_file()
    assert f"resumed from step {step}" in done.stdout


def test_codec_objectives_train():
    """Every codec objective (features, units, units + speaker adversary) takes steps."""
    from tinysora.train.voice_content import CodecObjective

    g = torch.Generator().manual_seed(0)
    for target, adversarial in (("features", 0.0), ("units", 0.0), ("units", 1.0)):
        codec = SemanticCodec(CodecConfig(dim=16, code_dim=8, codebook_size=16))
        codec.quantizers[0].init_from(torch.randn(64, 8, generator=g), g)
        objective = CodecObjective(
            codec, n_units=10, n_speakers=3, target=target, adversarial=adversarial
        )
        x = torch.randn(2, 12, 16, generator=g)
        units = torch.randint(10, (2, 12), generator=g)
        units[1, 8:] = -100  # padding
        loss, metrics = objective(x, units, torch.tensor([0, 2]), g)
        loss.backward()
        assert torch.isfinite(loss) and codec.down.weight.grad.abs().sum() > 0
        assert ("unit_ce" in metrics) == (target == "units")
        assert ("speaker_ce" in metrics) == (adversarial > 0)
    with pytest.raises(ValueError, match="'units' or 'features'"):
        CodecObjective(codec, 10, 3, "phones", 0.0)


def test_warp_mel_moves_frequencies_not_time():
    import numpy as np

    from tinysora.voice.audio import SpectrogramConfig, mel_matrix, mel_spectrogram
    from tinysora.voice.content import warp_mel

    cfg = SpectrogramConfig()
    t = np.arange(16000) / 16000
    x = torch.from_numpy((0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))[None]
    mel = mel_spectrogram(x, cfg).repeat(3, 1, 1)
    warped = warp_mel(mel, torch.tensor([1.0, 1.25, 0.8]))
    assert warped.shape == mel.shape
    assert_close_fp32(warped[0], mel[0], rtol=1e-4)  # factor 1: the same bands
    centres = mel_matrix(cfg).argmax(dim=1).float() * cfg.sample_rate / cfg.n_fft
    peaks = [centres[warped[b, :, 25].argmax()].item() for b in range(3)]
    assert abs(peaks[1] - 1250) < 60 and abs(peaks[2] - 800) < 60
    assert torch.equal(warped[1].argmax(dim=0), warped[1, :, :1].argmax(dim=0).expand(50))


def test_warped_batches_keep_their_targets(tiny_content):
    from tinysora.train.voice_content import VoiceContentRecipe, _labels_batch
    from tinysora.voice.data import load_utterances

    recipe = VoiceContentRecipe.load(tiny_content / "recipe.json")
    data = load_utterances(tiny_content / "features" / "train.safetensors")
    labels = torch.zeros(len(data.mel), dtype=torch.int16)
    plain = _labels_batch(data, labels, recipe, step=3)
    recipe.model.warp = 0.2
    warped = _labels_batch(data, labels, recipe, step=3)
    assert torch.equal(plain[2], warped[2]) and torch.equal(plain[3], warped[3])
    assert not torch.equal(plain[0], warped[0])


def test_refine_objective_heads():
    """Phone CTC only on crops holding a whole utterance; the speaker classifier's gradient
    reaches the encoder reversed (the classifier learns to tell voices apart, the encoder
    to hide them)."""
    from tinysora.train.voice_content import GradReverse, RefineObjective
    from tinysora.voice.content import ContentConfig, ContentEncoder

    torch.manual_seed(0)
    enc = ContentEncoder(ContentConfig(dim=32, layers=2, heads=2, feature_layer=1, n_units=7))
    mel, lengths = torch.randn(3, 80, 40), torch.tensor([40, 30, 25])
    target = torch.randint(7, (3, 40))
    masked = torch.rand(3, 40) < 0.3
    phones = [torch.tensor([1, 2, 3]), None, torch.tensor([4, 4, 2, 1])]
    speakers = torch.tensor([0, 1, 2])

    def grads(ctc, adversarial):
        torch.manual_seed(1)
        objective = RefineObjective(enc, n_phones=5, n_speakers=3, ctc=ctc, adversarial=adversarial)
        enc.zero_grad()
        loss, metrics = objective(mel, lengths, target, masked, phones, speakers)
        loss.backward()
        return objective, metrics, enc.inp.weight.grad.clone()

    _, plain, g0 = grads(0.0, 0.0)
    assert set(plain) == {"unit_acc"}
    objective, both, g1 = grads(1.0, 0.5)
    assert {"ctc", "speaker_ce", "speaker_acc"} <= set(both) and torch.isfinite(both["ctc"])
    assert objective.phone_head.weight.grad.abs().sum() > 0
    assert not torch.allclose(g0, g1)
    # gradient reversal: identity forward, the gradient times -scale backward
    x = torch.randn(4, requires_grad=True)
    y = GradReverse.apply(x, 0.5)
    (grad,) = torch.autograd.grad((y * torch.arange(4.0)).sum(), x)
    assert torch.equal(y, x) and torch.equal(grad, -0.5 * torch.arange(4.0))
