"""Which espeak-ng should the phonemes come from? The bundled one (the espeakng-loader
wheel, espeak-ng 1.52) against the system's (Debian 12's espeak-ng 1.51, which made the
corpus the bundled voice was trained on), measured (issue 29):

1. phonemes of the corpus's sentence pool (``sentences(N, seed=0)``, the pool
   ``tinysora voice corpus`` draws from): sentences, words and symbols that differ;
2. intelligibility of the bundled voice on the sentences whose phonemes differ, spoken
   with each front end (pocketsphinx WER, the domain's bigram LM; the LM is built from
   the same pool, so both WERs are optimistic in the same way: compare them, not their
   level), plus identical-phoneme control sentences (their WER must be equal).

Each library runs in its own process (espeak-ng is a C library with global state);
``PHONEMIZER_ESPEAK_LIBRARY`` picks the system's. Needs ``apt-get install espeak-ng``
and the voice-eval extras (pocketsphinx, jiwer).

    OMP_NUM_THREADS=1 python scripts/espeak_compare.py --json bench/results/DATE-espeak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

SYSTEM_LIBRARY = "/usr/lib/x86_64-linux-gnu/libespeak-ng.so.1"


def worker(args: argparse.Namespace) -> None:
    """Phonemize the pool; then speak and transcribe the sentences of --speak."""
    from tinysora.voice.sentences import sentences
    from tinysora.voice.text import phoneme_engine, phonemize

    pool = sentences(args.n, seed=0)
    out = {"engine": phoneme_engine(), "phonemes": phonemize(pool)}
    if args.speak_file:
        from tinysora.eval.voice import Recognizer
        from tinysora.voice.speech import SpeechPipeline

        tts = SpeechPipeline.from_pretrained()
        with tempfile.TemporaryDirectory() as tmp:
            asr = Recognizer(pool, Path(tmp))
            texts = json.loads(Path(args.speak_file).read_text())
            out["heard"] = [asr(tts(t, seed=0).audio) for t in texts]
    print(json.dumps(out))


def run(source: str, n: int, speak: Path | None) -> dict:
    env = dict(os.environ)
    env.pop("PHONEMIZER_ESPEAK_LIBRARY", None)
    if source == "system":
        env["PHONEMIZER_ESPEAK_LIBRARY"] = SYSTEM_LIBRARY
    cmd = [sys.executable, __file__, "--worker", "--n", str(n)]
    cmd += ["--speak-file", str(speak)] if speak else []
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200)
    if res.returncode:
        sys.exit(f"{source} worker failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="sentences of the pool to compare")
    ap.add_argument("--speak", type=int, default=60, help="differing sentences to speak")
    ap.add_argument("--controls", type=int, default=10, help="identical ones to speak")
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--speak-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from tinysora.eval.voice import wer
    from tinysora.voice.sentences import sentences

    pool = sentences(args.n, seed=0)
    first = {s: run(s, args.n, None) for s in ("bundled", "system")}
    bundled, system = first["bundled"]["phonemes"], first["system"]["phonemes"]
    differ = [i for i, (a, b) in enumerate(zip(bundled, system, strict=True)) if a != b]
    pairs = [zip(bundled[i].split(), system[i].split(), strict=False) for i in differ]
    words = [(a, b) for pair in pairs for a, b in pair]  # word by word (same word counts)
    n_words = sum(len(p.split()) for p in system)
    changes = Counter(f"{b} -> {a}" for a, b in words if a != b)
    rng = random.Random(0)
    spoken = rng.sample(differ, min(args.speak, len(differ)))
    same = [i for i in range(len(pool)) if i not in set(differ)]
    controls = rng.sample(same, min(args.controls, len(same)))
    report = {
        "engines": {k: v["engine"] for k, v in first.items()},
        "sentences": len(pool),
        "sentences_differ": len(differ),
        "words": n_words,
        "words_differ": sum(a != b for a, b in words),
        "top_changes (system -> bundled)": changes.most_common(15),
    }
    with tempfile.TemporaryDirectory() as tmp:
        texts = Path(tmp) / "speak.json"
        texts.write_text(json.dumps([pool[i] for i in spoken + controls]))
        heard = {s: run(s, args.n, texts)["heard"] for s in ("bundled", "system")}
    k = len(spoken)
    for source, hyps in heard.items():
        report[f"wer_differing_{source}"] = wer([pool[i] for i in spoken], hyps[:k])
        report[f"wer_controls_{source}"] = wer([pool[i] for i in controls], hyps[k:])
    report["spoken"] = {"differing": k, "controls": len(controls)}
    text = json.dumps(report, indent=1, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
