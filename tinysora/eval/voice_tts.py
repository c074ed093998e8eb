"""`tinysora eval voice --tts`: zero-shot text-to-speech judged offline (issue 19).

Sentences of ``test_unseen.list`` (held-out sentences, each spoken by one of the unseen
voices, whole base voices no model trained on). For each: a 5-10 s reference of that
voice made from its *other* held-out utterances (with their transcript as the prompt
text), the sentence synthesized in it, and the same sentence as the voice's own engine
said it (the reference engine). Judges as ``eval voice`` (pocketsphinx + the domain
bigram LM, Resemblyzer, DNSMOS); plus the duration ratio to the engine's audio, the
real-time factor (synthesis seconds / audio seconds, whole-utterance calls) and the
streaming time to first audio (from the call, reference encoding included, to the first
chunk), over the first ``STREAMED`` sentences.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tinysora.errors import UserError
from tinysora.eval.metrics import write_json
from tinysora.eval.voice import (
    RATE,
    Recognizer,
    SpeakerJudge,
    dnsmos,
    reference_clip,
    targets_line,
    wer,
)
from tinysora.voice.audio import load_audio
from tinysora.voice.corpus import read_list
from tinysora.voice.speech import SpeechPipeline

STREAMED = 10
DURATION_RANGE = (0.6, 1.6)


def evaluate_tts(
    tts: SpeechPipeline, corpus: Path, n: int, workdir: Path, knobs: dict | None = None
) -> dict:
    """The report; ``knobs``: sampling settings for every call (top_k, temperature, ...)."""
    knobs = knobs or {}
    train, unseen = read_list(corpus / "train.list"), read_list(corpus / "test_unseen.list")
    rng = np.random.default_rng(0)
    chosen = sorted(rng.permutation(len(unseen))[:n].tolist())
    rows = [unseen[i] for i in chosen]
    refs: dict[str, tuple[np.ndarray, str]] = {}
    for voice in sorted({r[1] for r in rows}):  # each voice's reference: its other sentences
        others = [r for i, r in enumerate(unseen) if r[1] == voice and i not in chosen]
        others = others or [r for r in unseen if r[1] == voice]
        clip, used = reference_clip([r[0] for r in others])
        refs[voice] = (clip, " ".join(others[k % len(others)][2] for k in range(used)))
    asr, judge = Recognizer([r[2] for r in train], workdir), SpeakerJudge()
    ref_embeddings = {v: judge.embed(clip) for v, (clip, _) in refs.items()}
    cosine = lambda a, b: float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))  # noqa: E731
    out_rows, seconds, audio = [], 0.0, 0.0
    for k, (path, voice, text, _) in enumerate(tqdm(rows, desc="tts eval")):
        clip, ref_text = refs[voice]
        start = time.perf_counter()
        out = tts(text, ref_audio=clip, ref_text=ref_text, seed=k, **knobs)
        seconds += time.perf_counter() - start
        audio += out.seconds
        engine = load_audio(path, RATE)
        emb = judge.embed(out.audio)
        others = [cosine(emb, e) for v, e in ref_embeddings.items() if v != voice]
        out_rows.append(
            {
                "voice": voice,
                "text": text,
                "hyp": asr(out.audio),
                "engine_hyp": asr(engine),
                "sim_ref": cosine(emb, ref_embeddings[voice]),
                "sim_other": float(np.mean(others)) if others else None,
                "dnsmos": dnsmos(out.audio),
                "engine_dnsmos": dnsmos(engine),
                "seconds": out.seconds,
                "duration_ratio": out.seconds / (len(engine) / RATE),
                "stops": [p["stop"] for p in out.pieces],
                "attempts": sum(p["attempts"] for p in out.pieces),
            }
        )
    first_audio = []
    for k, (_, voice, text, _) in enumerate(rows[:STREAMED]):
        clip, ref_text = refs[voice]
        start = time.perf_counter()
        chunks = tts.stream(text, ref_audio=clip, ref_text=ref_text, seed=k, **knobs)
        next(chunks)
        first_audio.append(time.perf_counter() - start)
        chunks.close()
    texts = [r["text"] for r in out_rows]
    ratios = [r["duration_ratio"] for r in out_rows]
    lo, hi = DURATION_RANGE
    report = {
        "n": len(out_rows),
        "voices": sorted(refs),
        "wer": wer(texts, [r["hyp"] for r in out_rows]),
        "engine_wer": wer(texts, [r["engine_hyp"] for r in out_rows]),
        "sim_ref": float(np.mean([r["sim_ref"] for r in out_rows])),
        "sim_other": float(np.mean([r["sim_other"] for r in out_rows if r["sim_other"]])),
        "dnsmos": float(np.mean([r["dnsmos"] for r in out_rows])),
        "engine_dnsmos": float(np.mean([r["engine_dnsmos"] for r in out_rows])),
        "duration_ratio": {
            "mean": float(np.mean(ratios)),
            "min": float(min(ratios)),
            "max": float(max(ratios)),
            "outside": sum(not lo <= x <= hi for x in ratios),
        },
        "stops": {s: sum(r["stops"].count(s) for r in out_rows) for s in ("eos", "loop", "limit")},
        "resampled": sum(r["attempts"] > len(r["stops"]) for r in out_rows),
        "rtf": seconds / audio,
        "first_audio_s": {"mean": float(np.mean(first_audio)), "max": float(max(first_audio))},
        "threads": torch.get_num_threads(),
        "knobs": knobs,
    }
    report["targets"] = {
        "wer_le_1.5x_engine": report["wer"] <= 1.5 * report["engine_wer"],
        "sim_ref_ge_0.80": report["sim_ref"] >= 0.80,
        "duration_within_0.6_1.6x": report["duration_ratio"]["outside"] == 0,
        "rtf_le_0.3": report["rtf"] <= 0.3,
        "first_audio_lt_1s": report["first_audio_s"]["max"] < 1.0,
    }
    report["rows"] = out_rows
    return report


def summary_lines(r: dict) -> list[str]:
    d = r["duration_ratio"]
    return [
        f"tts          WER {r['wer']:.1%} (engine {r['engine_wer']:.1%})  sim ref "
        f"{r['sim_ref']:.3f} (other voices {r['sim_other']:.3f})  DNSMOS {r['dnsmos']:.2f} "
        f"(engine {r['engine_dnsmos']:.2f})  ({r['n']} sentences, {len(r['voices'])} voices)",
        f"duration     x{d['mean']:.2f} of the engine's (min {d['min']:.2f}, max {d['max']:.2f}, "
        f"{d['outside']} outside 0.6-1.6)  stops {r['stops']}  resampled {r['resampled']}",
        f"speed        RTF {r['rtf']:.3f}, first streamed audio {r['first_audio_s']['mean']:.2f} s "
        f"(max {r['first_audio_s']['max']:.2f}) at {r['threads']} threads",
        targets_line(r["targets"]),
    ]


def run(args: argparse.Namespace) -> dict:
    corpus = Path(args.corpus)
    if not (corpus / "test_unseen.list").is_file():
        raise UserError(
            f"'{corpus}' has no test_unseen.list (the unseen voices); make the "
            "corpus with tinysora voice corpus"
        )
    tts = SpeechPipeline.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        report = evaluate_tts(tts, corpus, args.n or 100, Path(tmp))
    print("\n".join(summary_lines(report)))
    write_json(report, args.json)
    return report
