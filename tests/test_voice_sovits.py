"""The SoVITS generator: its parts, the GAN training run (resume exact, kill -9 safe) and
voice conversion through the CLI."""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, kill_note, kill_plan, kill_runs, kill_seed, voice_recipe
from numerics import assert_close_fp32

from tinysora.voice.sovits import (
    Flow,
    Generator,
    MultiDiscriminator,
    SoVITSConfig,
    discriminator_loss,
    kl_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flow_is_identity_fresh_and_inverts():
    c = SoVITSConfig(**TINY_MODEL)
    flow = Flow(c)
    z, mask, g = torch.randn(2, 16, 30), torch.ones(2, 1, 30), torch.randn(2, 16, 1)
    mask[1, :, 20:] = 0
    z = z * mask
    assert_close_fp32(flow(z, mask, g), _flips(z, c.flow_couplings))  # fresh: only the flips
    for coupling in flow.couplings:  # a trained flow: the reverse pass undoes the forward
        torch.nn.init.normal_(coupling.post.weight, std=0.3)
    z_p = flow(z, mask, g)
    assert (z_p - _flips(z, c.flow_couplings)).abs().max() > 0.01
    assert_close_fp32(flow(z_p, mask, g, reverse=True), z, rtol=1e-4)


def _flips(z: torch.Tensor, n: int) -> torch.Tensor:
    return torch.flip(z, [1]) if n % 2 else z


def test_generator_length_and_rate_check():
    c = SoVITSConfig(**TINY_MODEL)
    wav = Generator(c)(torch.randn(2, c.inter, 7), torch.randn(2, c.gin, 1))
    assert wav.shape == (2, 1, 7 * c.hop) and wav.abs().max() <= 1
    with pytest.raises(ValueError, match="multiply to 160, not the hop 320"):
        Generator(SoVITSConfig(**{**TINY_MODEL, "dec_rates": (10, 8, 2)}))


def test_losses():
    d = MultiDiscriminator(4)
    real, fake = d(torch.randn(2, 1, 2560), torch.randn(2, 1, 2560))[:2]
    assert len(real) == 6  # one scale + five periods
    ones = [torch.ones(3, 5)] * 2
    assert discriminator_loss(ones, [torch.zeros(3, 5)] * 2) == 0
    g = torch.Generator().manual_seed(0)
    m, logs = torch.randn(1, 8, 4000, generator=g), 0.3 * torch.randn(1, 8, 4000, generator=g)
    z = m + torch.randn(1, 8, 4000, generator=g) * logs.exp()  # a sample of q = p
    assert abs(float(kl_loss(z, logs, m, logs, torch.ones(1, 1, 4000)))) < 0.15  # 5 sigma
    assert float(kl_loss(z, logs, m + 2.0, logs, torch.ones(1, 1, 4000))) > 1.0


def test_train_voice_resume_is_exact_and_exports(tiny_corpus, tiny_content, tmp_path):
    from tinysora.io.checkpoint import CheckpointError, load_tensors
    from tinysora.train.voice_sovits import train_voice

    content = tiny_content / "content"
    recipe = voice_recipe(tmp_path / "r.toml", tiny_corpus, content, steps=6, every=3)
    whole = train_voice(recipe, tmp_path / "whole")
    with pytest.raises(FileExistsError, match="--resume"):
        train_voice(recipe, tmp_path / "whole")
    train_voice(recipe, tmp_path / "halves", stop_at=3)
    train_voice(recipe, tmp_path / "halves", resume=True)
    a = load_tensors(whole / "sovits" / "model.safetensors")
    b = load_tensors(tmp_path / "halves" / "model" / "sovits" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert any("eval" in r for r in log) and all(np.isfinite(r.get("loss", 0)) for r in log)
    assert sorted((tmp_path / "whole" / "samples").glob("step_*/*.wav"))
    assert (whole / "content" / "config.json").is_file() and (whole / "phonemes.txt").is_file()
    # --init: a new run starts from the other run's weights (step 0, fresh optimizers)
    warm = train_voice(recipe, tmp_path / "warm", stop_at=0, init=tmp_path / "whole")
    c = load_tensors(warm / "sovits" / "model.safetensors")
    assert c.keys() == a.keys() and all(torch.equal(a[k], c[k]) for k in a)
    assert not (tmp_path / "warm" / "checkpoints").exists()
    with pytest.raises(CheckpointError, match="no checkpoints/latest"):
        train_voice(recipe, tmp_path / "cold", stop_at=0, init=tmp_path / "halves" / "model")


def test_train_voice_killed_at_random_moments_resumes_to_the_uninterrupted_run(
    tiny_corpus, tiny_content, tmp_path
):
    """kill -9 of a real `tinysora train voice` process twice at random moments (one of
    them mid-save; seeded, TINYSORA_KILL_SEED draws them again), then --resume: the
    generator, the discriminators and both optimizers end bit-identical to an
    uninterrupted run's (same machine)."""
    from tinysora.io.checkpoint import load_tensors

    recipe = voice_recipe(tmp_path / "r.toml", tiny_corpus, tiny_content / "content", 8, 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tinysora", "train", "voice", "--config", str(recipe), "--out"]
    start = time.perf_counter()
    subprocess.run(
        cmd + [str(tmp_path / "whole")], env=env, capture_output=True, timeout=600, check=True
    )
    seed = kill_seed()
    plan = kill_plan(random.Random(seed), 2, time.perf_counter() - start)
    run = tmp_path / "killed"
    writing = functools.partial(
        lambda root: {p.name for p in root.glob(".step_*.tmp")}, run / "checkpoints"
    )

    def args_for(resume: bool) -> list[str]:
        return cmd + [str(run)] + (["--resume"] if resume else [])

    outcomes = kill_runs(plan, args_for, env, tmp_path / "killed.log", writing, run)
    note = kill_note(plan, outcomes, seed)
    assert "killed" in outcomes, f"every attempt ended before its kill: {note}"
    latest = run / "checkpoints" / "latest"
    step = int(latest.read_text().split("_")[1]) if latest.exists() else 0
    done = subprocess.run(
        cmd + [str(run), "--resume"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{done.stderr[-2000:]}\n{note}"
    assert step == 0 or f"resumed from step {step}" in done.stdout, note
    files = ["model/sovits/model.safetensors"] + [
        f"checkpoints/step_00000008/{name}.safetensors"
        for name in ("model", "optimizer", "discriminator", "discriminator_optimizer")
    ]
    for name in files:
        a, b = load_tensors(tmp_path / "whole" / name), load_tensors(run / name)
        assert a.keys() == b.keys(), f"{name}; {note}"
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs; {note}"


def test_voice_convert_cli_and_api(tiny_corpus, tiny_voice_model, tmp_path):
    import soundfile

    from tinysora.voice.audio import AudioError
    from tinysora.voice.convert import VoiceConverter
    from tinysora.voice.corpus import read_list

    rows = read_list(tiny_corpus / "test_seen.list")
    source = rows[0][0]
    ref_wav = np.concatenate([soundfile.read(str(r[0]), dtype="float32")[0] for r in rows[1:4]])
    ref = tmp_path / "ref.wav"
    soundfile.write(str(ref), ref_wav[: 6 * 16000], 16000)
    out = tmp_path / "out.wav"
    cli = [sys.executable, "-m", "tinysora", "voice", "convert"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(source), "-o", str(out), "--model", str(tiny_voice_model), "--ref"]
    done = subprocess.run(
        cli + args + [str(ref)], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr
    info, src = soundfile.info(str(out)), soundfile.info(str(source))
    assert info.samplerate == 16000 and abs(info.duration - src.duration) < 0.05
    vc = VoiceConverter.from_pretrained(tiny_voice_model)
    a = vc(source, ref, text=rows[0][2], seed=1)
    assert np.array_equal(a, vc(source, ref, text=rows[0][2], seed=1))  # seeded
    short = tmp_path / "short.wav"
    soundfile.write(str(short), ref_wav[: 2 * 16000], 16000)
    silent = tmp_path / "silent.wav"
    soundfile.write(str(silent), np.zeros(5 * 16000, np.float32), 16000)
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    for bad_ref, message in (
        (short, "give a clip of 3-10 s"),
        (silent, "is silent"),
        (junk, "not audio"),
    ):
        with pytest.raises(AudioError, match=message):
            vc(source, bad_ref)
    bad = subprocess.run(
        cli + args + [str(short)], capture_output=True, text=True, timeout=600, env=env
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "3-10 s" in bad.stderr


def test_bundled_voice_says_the_source(tiny_corpus, tmp_path, one_thread):
    """The bundled weights/voice converts with no --model: the output has the source's
    length and follows its spectrum over time (its log-mel correlates with the source's
    more than with another held-out sentence)."""
    import soundfile

    from tinysora.voice.audio import SpectrogramConfig, load_audio, mel_spectrogram
    from tinysora.voice.convert import VoiceConverter
    from tinysora.voice.corpus import read_list

    rows = read_list(tiny_corpus / "test_seen.list")
    source = rows[0][0]
    other = next(r[0] for r in rows if r[2] != rows[0][2])
    ref_wav = np.concatenate([soundfile.read(str(r[0]), dtype="float32")[0] for r in rows[1:5]])
    ref = tmp_path / "ref.wav"
    soundfile.write(str(ref), ref_wav[: 6 * 16000], 16000)
    out = VoiceConverter.from_pretrained()(source, ref, seed=0)
    src = load_audio(source, 16000)
    assert abs(len(out) - len(src)) <= 320
    spec = SpectrogramConfig()

    def corr(a, b):
        ma, mb = (mel_spectrogram(torch.from_numpy(x)[None], spec)[0] for x in (a, b))
        n = min(ma.shape[1], mb.shape[1])
        ea, eb = ma[:, :n].mean(0), mb[:, :n].mean(0)  # frame energy contours
        return float(torch.corrcoef(torch.stack([ea, eb]))[0, 1])

    assert corr(out, src) > 0.6 and corr(out, src) > corr(out, load_audio(other, 16000)) + 0.2
