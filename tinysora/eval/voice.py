"""`tinysora eval voice`: the SoVITS stage judged offline (issue 18).

Two tasks on held-out sentences of the corpus (``test_seen.list``: train voices saying
sentences no model trained on):

* **resynthesis**: each source converted with a 3-10 s reference of its own voice (train
  utterances of that speaker) and its transcript;
* **conversion**: each source converted to an unseen voice (``test_unseen.list``, a
  reference of 3-10 s of that voice), without a transcript.

Judges (all offline): intelligibility by pocketsphinx (its en-US acoustic model and
dictionary, with a bigram language model of the corpus's train sentences, since its
general-English one reads synthetic speech poorly) and jiwer WER, against the text, for
the output and for the source itself; speaker similarity by Resemblyzer (cosine of GE2E
embeddings) to the reference clip and to the source; DNSMOS (speechmos); F0 RMSE (pyworld
harvest, frames voiced in both, Hz); mel-cepstral distortion (24 cepstra of the 80-band
log-mel, c0 left out, frame-aligned: a conversion keeps its source's frames; dB); real-
time factor (conversion seconds / audio seconds, with this process's torch threads).

Needs the judges: pip install 'tinysora[voice-eval]'.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from tinysora.errors import UserError
from tinysora.eval.metrics import write_json
from tinysora.voice.audio import REF_SECONDS, SpectrogramConfig, load_audio, mel_spectrogram
from tinysora.voice.convert import VoiceConverter
from tinysora.voice.corpus import read_list

RATE = 16000
MCD_ORDER = 24


def _need(module: str):
    import importlib
    import warnings

    try:
        with warnings.catch_warnings():  # webrtcvad (Resemblyzer's) imports pkg_resources
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"eval voice needs {module}: pip install 'tinysora[voice-eval]'") from e


# --------------------------------------------------------------------------- judges


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def bigram_arpa(sentences: list[str], path: Path, discount: float = 0.5) -> Path:
    """An ARPA bigram model (absolute discounting, backoff to unigrams) of ``sentences``."""
    uni, bi = Counter(), Counter()
    for s in sentences:
        w = ["<s>", *words(s), "</s>"]
        uni.update(w)
        bi.update(zip(w[:-1], w[1:], strict=False))
    total = sum(c for w, c in uni.items() if w != "<s>")
    p_uni = {w: (c / total if w != "<s>" else 1e-99) for w, c in uni.items()}
    followers: dict[str, list[tuple[str, int]]] = {}
    for (a, b), c in bi.items():
        followers.setdefault(a, []).append((b, c))
    lines = ["\\data\\", f"ngram 1={len(uni)}", f"ngram 2={len(bi)}", "", "\\1-grams:"]
    bigram_lines = []
    for w in sorted(uni):
        nexts = followers.get(w, [])
        count = sum(c for _, c in nexts)
        backoff = 0.0
        if nexts:
            left = discount * len(nexts) / count  # mass freed by discounting
            seen = sum(p_uni[b] for b, _ in nexts)
            backoff = math.log10(max(left, 1e-12) / max(1 - seen, 1e-12))
            for b, c in sorted(nexts):
                bigram_lines.append(f"{math.log10((c - discount) / count):.6f} {w} {b}")
        lines.append(f"{math.log10(p_uni[w]):.6f} {w} {backoff:.6f}")
    lines += ["", "\\2-grams:", *bigram_lines, "", "\\end\\", ""]
    path.write_text("\n".join(lines))
    return path


class Recognizer:
    """pocketsphinx with the corpus domain's bigram LM; words outside its dictionary are
    left out of the LM (they cannot be recognised either way)."""

    def __init__(self, train_sentences: list[str], workdir: Path):
        ps = _need("pocketsphinx")
        model = Path(ps.get_model_path())
        dict_path = model / "en-us" / "cmudict-en-us.dict"
        known = {
            line.split(" ", 1)[0] for line in dict_path.read_text(errors="ignore").splitlines()
        }
        kept = [" ".join(w for w in words(s) if w in known) for s in train_sentences]
        lm = bigram_arpa(kept, workdir / "domain.arpa")
        self.decoder = ps.Decoder(samprate=RATE, lm=str(lm), dict=str(dict_path), loglevel="FATAL")

    def __call__(self, wav: np.ndarray) -> str:
        pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16).tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp is not None else ""


def wer(refs: list[str], hyps: list[str]) -> float:
    jiwer = _need("jiwer")
    return float(
        jiwer.wer(
            [" ".join(words(r)) for r in refs], [" ".join(words(h)) or "<empty>" for h in hyps]
        )
    )


class SpeakerJudge:
    def __init__(self):
        resemblyzer = _need("resemblyzer")
        self.encoder = resemblyzer.VoiceEncoder(device="cpu", verbose=False)
        self.pre = resemblyzer.preprocess_wav

    def embed(self, wav: np.ndarray) -> np.ndarray:
        return self.encoder.embed_utterance(self.pre(wav, source_sr=RATE))

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        ea, eb = self.embed(a), self.embed(b)
        return float(np.dot(ea, eb) / (np.linalg.norm(ea) * np.linalg.norm(eb)))


def dnsmos(wav: np.ndarray) -> float:
    return float(_need("speechmos.dnsmos").run(wav, sr=RATE)["ovrl_mos"])


def f0_rmse(a: np.ndarray, b: np.ndarray) -> float | None:
    pyworld = _need("pyworld")
    n = min(len(a), len(b))
    fa, _ = pyworld.harvest(a[:n].astype(np.float64), RATE)
    fb, _ = pyworld.harvest(b[:n].astype(np.float64), RATE)
    both = (fa > 0) & (fb > 0)
    return float(np.sqrt(((fa[both] - fb[both]) ** 2).mean())) if both.any() else None


def mel_cepstra(wav: np.ndarray, spec: SpectrogramConfig) -> np.ndarray:
    """(frames, MCD_ORDER) cepstra 1..24 of the log-mel, scaled as SPTK's mel-cepstra
    (log S = c0 + 2 sum c_n cos(...)), so the MCD is on the usual dB scale."""
    n = len(wav) // spec.hop * spec.hop
    logmel = mel_spectrogram(torch.from_numpy(wav[:n].astype(np.float32))[None], spec)[0]
    m = logmel.shape[0]
    k = torch.arange(m, dtype=torch.float64)
    basis = torch.cos(math.pi / m * (k[None] + 0.5) * torch.arange(MCD_ORDER + 1)[:, None]) / m
    return (basis @ logmel.double())[1:].T.numpy()


def mcd(a: np.ndarray, b: np.ndarray, spec: SpectrogramConfig) -> float:
    ca, cb = mel_cepstra(a, spec), mel_cepstra(b, spec)
    n = min(len(ca), len(cb))
    diff = ca[:n] - cb[:n]
    return float((10.0 / math.log(10.0)) * np.sqrt(2.0 * (diff**2).sum(axis=1)).mean())


# --------------------------------------------------------------------------- references


def reference_clip(paths: list[Path]) -> tuple[np.ndarray, int]:
    """Utterances of one voice joined (0.3 s gaps) into a 5-10 s reference clip (a voice
    with too little speech has its utterances repeated): the clip, and how many
    utterances it holds (utterance k of the clip is ``paths[k % len(paths)]``)."""
    lo, hi = REF_SECONDS
    gap = np.zeros(int(0.3 * RATE), np.float32)
    wavs = [load_audio(p, RATE) for p in paths[:8]]
    clip, used = np.zeros(0, np.float32), 0
    for k in range(4 * len(wavs)):
        wav = wavs[k % len(wavs)]
        candidate = np.concatenate([clip, gap, wav]) if len(clip) else wav
        if len(candidate) > hi * RATE:
            break
        clip, used = candidate, used + 1
        if len(clip) >= 5.0 * RATE:
            break
    if len(clip) < lo * RATE:
        raise UserError(f"cannot make a {lo:g}-{hi:g} s reference from {paths[0].parent}")
    return clip, used


def evaluate(vc: VoiceConverter, corpus: Path, n: int, workdir: Path) -> dict:
    spec = vc.spec
    train = read_list(corpus / "train.list")
    seen = read_list(corpus / "test_seen.list")
    unseen = read_list(corpus / "test_unseen.list")
    by_voice: dict[str, list[Path]] = {}
    for wav, speaker, _, _ in train + unseen:
        by_voice.setdefault(speaker, []).append(wav)
    asr = Recognizer([r[2] for r in train], workdir)
    judge = SpeakerJudge()
    rng = np.random.default_rng(0)
    sources = [seen[i] for i in rng.permutation(len(seen))[:n]]
    unseen_voices = sorted({r[1] for r in unseen})
    refs: dict[str, np.ndarray] = {}

    def ref_of(voice: str) -> np.ndarray:
        if voice not in refs:
            refs[voice] = reference_clip(by_voice[voice])[0]
        return refs[voice]

    rows = {"resynthesis": [], "conversion": []}
    texts, source_hyps = [], []
    seconds = audio = 0.0
    for k, (path, speaker, text, _) in enumerate(sources):
        src = load_audio(path, RATE)
        texts.append(text)
        source_hyps.append(asr(src))
        target = unseen_voices[k % len(unseen_voices)]
        for task, voice, transcript in (
            ("resynthesis", speaker, text),
            ("conversion", target, None),
        ):
            ref = ref_of(voice)
            start = time.perf_counter()
            out = vc(src, ref, text=transcript, seed=k)
            seconds += time.perf_counter() - start
            audio += len(out) / RATE
            row = {
                "source": str(path),
                "voice": voice,
                "text": text,
                "hyp": asr(out),
                "sim_ref": judge.similarity(out, ref),
                "sim_source": judge.similarity(out, src),
                "dnsmos": dnsmos(out),
            }
            if task == "resynthesis":
                row.update(mcd=mcd(out, src, spec), f0_rmse=f0_rmse(out, src))
            rows[task].append(row)
    source_mos = float(np.mean([dnsmos(load_audio(p, RATE)) for p, *_ in sources]))
    report = {"n": len(sources), "source": {"wer": wer(texts, source_hyps), "dnsmos": source_mos}}
    for task, rs in rows.items():
        f0 = [r["f0_rmse"] for r in rs if r.get("f0_rmse") is not None]
        report[task] = {
            "wer": wer(texts, [r["hyp"] for r in rs]),
            "sim_ref": float(np.mean([r["sim_ref"] for r in rs])),
            "sim_source": float(np.mean([r["sim_source"] for r in rs])),
            "dnsmos": float(np.mean([r["dnsmos"] for r in rs])),
            **(
                {"mcd": float(np.mean([r["mcd"] for r in rs])), "f0_rmse": float(np.mean(f0))}
                if task == "resynthesis"
                else {}
            ),
        }
    report["rtf"] = seconds / audio
    report["threads"] = torch.get_num_threads()
    src_wer = report["source"]["wer"]
    report["targets"] = {
        "resynthesis_wer_le_1.2x_source": report["resynthesis"]["wer"] <= 1.2 * src_wer,
        "resynthesis_mcd_le_6db": report["resynthesis"]["mcd"] <= 6.0,
        "conversion_sim_ref_ge_0.80": report["conversion"]["sim_ref"] >= 0.80,
        "conversion_sim_ref_gt_sim_source": report["conversion"]["sim_ref"]
        > report["conversion"]["sim_source"],
        "conversion_wer_le_1.5x_source": report["conversion"]["wer"] <= 1.5 * src_wer,
        "rtf_le_0.2": report["rtf"] <= 0.2,
    }
    report["rows"] = rows
    return report


def summary_lines(r: dict) -> list[str]:
    s, rs, cv = r["source"], r["resynthesis"], r["conversion"]
    return [
        f"source       WER {s['wer']:.1%}  DNSMOS {s['dnsmos']:.2f}  ({r['n']} sentences)",
        f"resynthesis  WER {rs['wer']:.1%}  MCD {rs['mcd']:.2f} dB  F0 RMSE "
        f"{rs['f0_rmse']:.1f} Hz  sim ref {rs['sim_ref']:.3f}  DNSMOS {rs['dnsmos']:.2f}",
        f"conversion   WER {cv['wer']:.1%}  sim ref {cv['sim_ref']:.3f} vs source "
        f"{cv['sim_source']:.3f}  DNSMOS {cv['dnsmos']:.2f}",
        f"speed        RTF {r['rtf']:.3f} ({r['threads']} threads)",
        targets_line(r["targets"]),
    ]


def targets_line(targets: dict[str, bool]) -> str:
    return "targets      " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in targets.items())


def run(args: argparse.Namespace) -> dict:
    import tempfile

    corpus = Path(args.corpus)
    if not (corpus / "test_seen.list").is_file():
        raise UserError(
            f"'{corpus}' is not a voice corpus (no test_seen.list); make one with "
            "tinysora voice corpus"
        )
    vc = VoiceConverter.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        report = evaluate(vc, corpus, args.n or 50, Path(tmp))
    print("\n".join(summary_lines(report)))
    write_json(report, args.json)
    return report
