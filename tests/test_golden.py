"""The bundled models' outputs stay the same across refactors, on every machine kind.

Fixed calls of the video pipeline (plain text-to-video and the conditioning paths:
image-to-video, extension, SDEdit, loop) and of the voice (a greedy and a sampled
``speak``, and the streamed one) are checked two ways:

* exact: on a machine kind recorded in ``tests/data/golden.json`` (CPU model, its
  matmul ISA, torch build, torch threads: what picks the kernels), the md5 of the
  outputs' bytes must match;
* close: everywhere, against the reference outputs in ``tests/data/golden.npz``
  (recorded on the AMD Zen 4 kind at one thread), within tolerances measured across
  kernels (below).

The video computes in bf16 where the CPU has bf16 arithmetic and in fp32 elsewhere
(``tinysora.device``), so it has one reference per compute dtype; the voice computes in
fp32 everywhere. The pipelines run on the CPU (their default) on every machine. The fast
set (4 steps: latents, and the frames of one call) and speech run in ``make test``;
the full set is the CLI's default calls (30 steps, decoded) in ``make test-slow``.

Record a kind (or new references, from a commit whose outputs are trusted) with
``python tests/test_golden.py`` (add ``--fp32`` for the fp32 reference on a bf16 CPU);
a failing md5 check also prints what it got.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tinysora import SpeechPipeline, TextToVideoPipeline
from tinysora.device import compute_dtype
from tinysora.perf import cpu_model
from tinysora.worlds.shapes import parse_caption, render

DATA = Path(__file__).parent / "data"
GOLDEN = json.loads((DATA / "golden.json").read_text())
FAST = 4  # sampling steps of the fast set

# Tolerances, measured on the Zen 4 kind by running the same calls under other kernels
# (fp32: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2,
# which reproduces 2 of the Zen 3 kind's md5s; bf16: ATEN_CPU_CAPABILITY=avx2, or
# ONEDNN_MAX_CPU_ISA=AVX512_CORE) and under changes that a regression makes (one sampling
# step fewer, another seed, one DiT weight x 1.01, another SoVITS noise scale).
# fp32 across kernels: latents 1e-6 relative, frames >= 94 dB, speech >= 120 dB. So fp32
# catches even small regressions: one step fewer of 4 moves latents 0.07-0.16, of 30
# leaves frames at 48-70 dB; the weight x 1.01 moves latents 1e-3, frames to 64-71 dB.
# bf16 across kernels: rounding to bf16 is chaotic over the steps: latents up to 0.024
# relative, frames >= 47.6 dB (4 steps) and 53.4-60 dB (30 steps); bf16 against fp32
# is no further (0.018, 48 dB). So bf16 catches one step fewer of 4 (0.07-0.17) and
# another seed (latents 0.13-0.44, frames 16-27 dB), not the weight x 1.01 (0.02).
# Speech (fp32): another noise scale leaves 23 dB, another seed another length.
LATENT_RTOL = {"float32": 1e-4, "bfloat16": 0.05}  # largest ||got - ref|| / ||ref||
FRAMES_PSNR_DB = {"float32": 75.0, "bfloat16": 42.0}  # least PSNR of uint8 frames
SPEECH_SNR_DB = 90.0  # least signal-to-difference ratio of the waveform (fp32)


def cpu_kind() -> str:
    """Model name, family / model numbers and the matmul ISA flags: what picks kernels."""
    info: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    isa = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
    flags = [f for f in isa if f in info.get("flags", "").split()]
    family, model = info.get("cpu family", "?"), info.get("model", "?")
    return f"{cpu_model()} | family {family} model {model} | {' '.join(flags)}"


def dtype() -> str:
    return str(compute_dtype()).removeprefix("torch.")


def this_record() -> dict:
    """The md5s recorded for this machine kind, torch build, thread count and compute
    dtype ({} if none)."""
    here = {"cpu": cpu_kind(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    here["dtype"] = dtype()
    return next((r for r in GOLDEN["records"] if all(r[k] == v for k, v in here.items())), {})


def calls() -> dict[str, tuple[str, dict, int]]:
    """name -> (prompt, conditioning, seed); inputs rendered as `tinysora world` does."""
    image = render(
        parse_caption("a small green square moving right on a black background", 3), 64, 64, 1
    )[0]
    clip = render(
        parse_caption("a large blue triangle moving up on a white background", 5), 64, 64, 17
    )
    return {
        "t2v": ("a large red circle bouncing on a navy background", {}, 0),
        "i2v": ("a small green square moving right on a black background", {"image": image}, 1),
        "extend": (
            "a large blue triangle moving up on a white background",
            {"video": clip, "extend": 8},
            2,
        ),
        "sdedit": (
            "a large red circle moving up on a white background",
            {"video": clip, "strength": 0.6},
            3,
        ),
        "loop": ("a small yellow circle moving left on a gray background", {"loop": True}, 4),
    }


FAST_LATENTS = ("t2v", "i2v", "sdedit")
SPEECH = {  # name -> (text, keywords of the call)
    "speak": ("A small red circle bouncing on a navy background.", {"seed": 0}),
    "speak_sampled": (
        "The quiet fox climbed the hill, then it rested.",
        {"seed": 3, "top_k": 20, "temperature": 0.8},
    ),
}


def generate(pipe, name: str, steps: int | None = None, seed: int | None = None, **call):
    """A call of ``calls()``: latents for ``output_type="latent"``, else uint8 frames (taken
    through PIL images, which are uint8 whatever ``"np"`` returns)."""
    prompt, kwargs, default_seed = calls()[name]
    out = pipe(
        prompt,
        generator=torch.Generator().manual_seed(default_seed if seed is None else seed),
        num_inference_steps=steps,
        progress=False,
        **kwargs,
        **{"output_type": "pil", **call},
    ).frames
    return out.numpy() if torch.is_tensor(out) else np.stack([np.asarray(f) for f in out])


def speak(tts, name: str, **changes) -> np.ndarray:
    """A call of ``SPEECH`` (``stream``: the greedy call, streamed and joined)."""
    if name == "stream":
        text, kwargs = SPEECH["speak"]
        return np.concatenate(list(tts.stream(text, **{**kwargs, **changes})))
    text, kwargs = SPEECH[name]
    return tts(text, **{**kwargs, **changes}).audio


def md5(array: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(array).tobytes()).hexdigest()


def reference_key(group: str, name: str) -> str:
    """The array's name in golden.npz: speech is fp32 everywhere, video per dtype."""
    return f"speech.{name}" if group == "speech" else f"{dtype()}.{group}.{name}"


def ratio_db(power: float, difference: np.ndarray) -> float:
    """``power`` over the mean square of ``difference``, in dB (PSNR, SNR)."""
    mse = float(np.mean(np.square(difference, dtype=np.float64)))
    return 10 * np.log10(power / mse) if mse else np.inf


def differs(group: str, name: str, got: np.ndarray, reference: np.ndarray) -> str | None:
    """Why ``got`` is not within tolerance of ``reference`` (None when it is)."""
    where = f"{group}/{name} ({dtype()})"
    if got.shape != reference.shape:
        return f"{where}: shape {got.shape}, the reference has {reference.shape}"
    if group == "speech":
        snr = ratio_db(float(np.mean(np.square(reference, dtype=np.float64))), got - reference)
        return None if snr >= SPEECH_SNR_DB else f"{where}: {snr:.1f} dB < {SPEECH_SNR_DB} dB"
    if got.dtype == np.uint8:
        psnr = ratio_db(255.0**2, got.astype(np.float64) - reference)
        least = FRAMES_PSNR_DB[dtype()]
        return None if psnr >= least else f"{where}: PSNR {psnr:.1f} dB < {least} dB"
    rel = float(np.linalg.norm(got - reference) / np.linalg.norm(reference))
    most = LATENT_RTOL[dtype()]
    return None if rel <= most else f"{where}: relative error {rel:.2e} > {most:.0e}"


def check(references, group: str, name: str, got: np.ndarray) -> None:
    """Within tolerance of the reference; bit-identical where this kind is recorded."""
    problem = differs(group, name, got, references[reference_key(group, name)])
    assert problem is None, problem
    expected = this_record().get(group, {}).get(name)
    if expected is not None:
        assert md5(got) == expected, f"{group}/{name}: md5 {md5(got)}, recorded {expected}"


@pytest.fixture(scope="module")
def references():
    with np.load(DATA / "golden.npz") as stored:
        return dict(stored)


@pytest.fixture(scope="module")
def pipe():
    return TextToVideoPipeline.from_pretrained()


@pytest.fixture(scope="module")
def tts():
    return SpeechPipeline.from_pretrained()


@pytest.mark.parametrize("name", FAST_LATENTS)
def test_fast_latents(pipe, references, name):
    check(references, "fast", name, generate(pipe, name, FAST, output_type="latent"))


def test_fast_frames(pipe, references):
    check(references, "fast", "t2v_frames", generate(pipe, "t2v", FAST))


@pytest.mark.parametrize("name", [*SPEECH, "stream"])
def test_speech(tts, references, name):
    check(references, "speech", name, speak(tts, name))


@pytest.mark.parametrize("change", [{"steps": FAST - 1}, {"seed": 1}], ids=["step", "seed"])
def test_the_tolerance_rejects_another_sampling(pipe, references, change):
    """One sampling step fewer, or another seed, is outside the tolerance on every kind."""
    got = generate(pipe, "t2v", **{"steps": FAST, **change}, output_type="latent")
    assert differs("fast", "t2v", got, references[reference_key("fast", "t2v")])


def test_the_tolerance_rejects_another_voice_noise(tts, references):
    got = speak(tts, "speak_sampled", noise_scale=0.35)  # the default is 0.3
    assert differs("speech", "speak_sampled", got, references["speech.speak_sampled"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["t2v", "i2v", "extend", "sdedit", "loop"])
def test_cli_default_generations(pipe, references, name):
    check(references, "full", name, generate(pipe, name))


def record(fp32: bool) -> None:
    """Write this machine's outputs into golden.npz (its dtype's video references and the
    speech) and print its golden.json record. ``fp32``: compute as a CPU without bf16
    arithmetic does (for the fp32 reference)."""
    if fp32:
        import tinysora.device

        tinysora.device.native_bf16 = lambda: False
    pipe, tts = TextToVideoPipeline.from_pretrained(), SpeechPipeline.from_pretrained()
    outputs = {("fast", n): generate(pipe, n, FAST, output_type="latent") for n in FAST_LATENTS}
    outputs["fast", "t2v_frames"] = generate(pipe, "t2v", FAST)
    outputs.update({("full", n): generate(pipe, n) for n in calls()})
    outputs.update({("speech", n): speak(tts, n) for n in [*SPEECH, "stream"]})
    arrays = {}
    if (DATA / "golden.npz").is_file():
        with np.load(DATA / "golden.npz") as stored:
            arrays = dict(stored)
    arrays.update({reference_key(*key): value for key, value in outputs.items()})
    np.savez_compressed(DATA / "golden.npz", **arrays)
    entry = {"cpu": cpu_kind(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    entry["dtype"] = dtype()  # the key of this_record()
    for (group, name), value in outputs.items():
        entry.setdefault(group, {})[name] = md5(value)
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    record(fp32="--fp32" in sys.argv[1:])
