"""Phoneme alignment of the corpus for the GPT stage's pointer (``GPTConfig.max_advance``):
which phoneme each content code voices.

A flat-start forced aligner, trained here on the corpus alone (no outside model): a small
MLP reads the content encoder's features (50 Hz, a window of +-3 frames) and classifies
the phoneme; alignments start uniform over each utterance's phonemes and are re-estimated
``iterations`` times by Viterbi over the classifier's scaled likelihoods (log posterior
less log prior), each frame staying on its phoneme or moving on. Marks that have no sound
of their own (spaces, punctuation, stress and length marks, combining diacritics) may be
passed over without a frame; every other phoneme holds at least one frame (20 ms). A
code (25 Hz) voices the phoneme of its first frame.

The results are cached as ``OUT/features/align_{split}.safetensors`` ("pointers": one
phoneme index per code, end to end, with the codes' offsets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tinysora.io.checkpoint import load_tensors, save_tensors
from tinysora.voice.content import ContentModel
from tinysora.voice.data import Split
from tinysora.voice.text import PhonemeVocab

CONTEXT = 3  # frames either side the classifier sees


def silent_marks(vocab: PhonemeVocab) -> torch.Tensor:
    """(V,) bool: tokens the alignment may pass over without a frame (anything that is
    not a letter: spaces, punctuation, stress / length marks, diacritics)."""
    return torch.tensor(
        [not (len(t) == 1 and t.isalpha() and t not in "ˈˌːʲ") for t in vocab.symbols]
    )


def viterbi(scores: np.ndarray, skippable: np.ndarray) -> np.ndarray:
    """Monotonic alignment of T frames to P states. scores (T, P) log-likelihoods,
    skippable (P,) bool. Each frame stays or moves on by 1, or by more over skippable
    states; the path starts at state 0 (or past leading skippable ones) and ends at the
    last state (or before trailing skippable ones). Returns (T,) state indices."""
    t_len, p = scores.shape
    neg = -1e30
    # reach[j]: the farthest jump allowed into state j: 1 + the skippable run before it
    reach = np.ones(p, dtype=np.int64)
    for j in range(2, p):
        reach[j] = reach[j - 1] + 1 if skippable[j - 1] else 1
    start = np.full(p, neg)
    start[0] = 0.0
    for j in range(1, p):
        if not skippable[j - 1]:
            break
        start[j] = 0.0
    best = start + scores[0]
    back = np.zeros((t_len, p), dtype=np.int64)
    idx = np.arange(p)
    for t in range(1, t_len):
        cand, arg = best.copy(), idx.copy()  # stay
        for jump in range(1, min(int(reach.max()), p - 1) + 1):
            moved = np.full(p, neg)
            moved[jump:] = best[:-jump]
            ok = (reach >= jump) & (moved > cand)
            cand = np.where(ok, moved, cand)
            arg = np.where(ok, idx - jump, arg)
        best = cand + scores[t]
        back[t] = arg
    ends = [p - 1]  # the last state, or one before a run of trailing skippable states
    while ends[-1] > 0 and skippable[ends[-1]]:
        ends.append(ends[-1] - 1)
    end = max(ends, key=lambda j: best[j])
    path = np.empty(t_len, dtype=np.int64)
    path[-1] = end
    for t in range(t_len - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


class FrameClassifier(nn.Module):
    def __init__(self, dim: int, n_phonemes: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim * (2 * CONTEXT + 1), hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, n_phonemes),
        )

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.net(windows)


class Frames:
    """A split's content features (50 Hz, bf16) end to end, each frame's utterance bounds
    and each utterance's phonemes."""

    def __init__(self, split: Split, content: ContentModel, name: str):
        feats, bounds, self.phones, total = [], [], [], 0
        for i in tqdm(range(len(split.data)), desc=f"align: features {name}"):
            codes = int(split.code_offsets[i + 1] - split.code_offsets[i])
            f = content.encoder.features(split.data.utterance_mel(i)[None])[0, : 2 * codes]
            feats.append(f.to(torch.bfloat16))
            bounds.append(torch.tensor([[total], [total + len(f)]]).expand(2, len(f)))
            self.phones.append(split.data.utterance_phonemes(i))
            total += len(f)
        self.features, self.bounds = torch.cat(feats), torch.cat(bounds, dim=1)
        self.lengths = [len(f) for f in feats]
        self.starts = np.cumsum([0, *self.lengths])

    def windows(self, frames: torch.Tensor) -> torch.Tensor:
        """(n, D * (2 CONTEXT + 1)) windows around ``frames``, clamped at utterance ends."""
        lo, hi = self.bounds[0, frames], self.bounds[1, frames] - 1
        return torch.cat(
            [
                self.features[torch.maximum(torch.minimum(frames + d, hi), lo)]
                for d in range(-CONTEXT, CONTEXT + 1)
            ],
            dim=-1,
        )

    def align(
        self, model: FrameClassifier, log_prior: torch.Tensor, skippable: np.ndarray, desc: str
    ) -> list[np.ndarray]:
        """Each utterance's frame -> phoneme index path under ``model``: every frame
        scored at once (in chunks), then one Viterbi per utterance."""
        total = len(self.features)
        scores = torch.empty(total, len(log_prior))
        for first in range(0, total, 65536):
            frames = torch.arange(first, min(first + 65536, total))
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                scores[frames] = model(self.windows(frames)).float().log_softmax(-1) - log_prior
        paths = []
        for k in tqdm(range(len(self.lengths)), desc=desc):
            mine = scores[int(self.starts[k]) : int(self.starts[k + 1]), self.phones[k]]
            paths.append(viterbi(mine.numpy(), skippable[self.phones[k].numpy()]))
        return paths


def align_splits(
    splits: dict[str, Split],
    content: ContentModel,
    vocab: PhonemeVocab,
    folder: Path,
    iterations: int = 3,
    steps: int = 600,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """{name: (total codes,) phoneme index of each code}: the aligner is trained on the
    first split, then aligns every split (cached as ``folder/align_{name}.safetensors``)."""
    paths = {name: folder / f"align_{name}.safetensors" for name in splits}
    if all(p.is_file() for p in paths.values()):
        return {name: load_tensors(p)["pointers"] for name, p in paths.items()}
    frames = {name: Frames(split, content, name) for name, split in splits.items()}
    first = frames[next(iter(splits))]
    skippable = silent_marks(vocab).numpy()
    # flat start: each utterance's frames spread evenly over its phonemes
    align = [
        np.minimum(np.arange(n) * len(p) // max(n, 1), len(p) - 1)
        for n, p in zip(first.lengths, first.phones, strict=True)
    ]
    g = torch.Generator().manual_seed(seed)
    model = FrameClassifier(first.features.shape[1], len(vocab))
    for it in range(iterations):
        labels = torch.cat(
            [p[torch.from_numpy(a)] for p, a in zip(first.phones, align, strict=True)]
        )
        prior = torch.bincount(labels, minlength=len(vocab)).float() + 1
        log_prior = (prior / prior.sum()).log()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        model.train()
        for _ in tqdm(range(steps), desc=f"align: classifier {it + 1}/{iterations}"):
            batch = torch.randint(len(labels), (4096,), generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(first.windows(batch))
            loss = F.cross_entropy(logits.float(), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        align = first.align(model, log_prior, skippable, f"align: viterbi {it + 1}/{iterations}")
    out = {}
    for name, f in frames.items():
        found = align if f is first else f.align(model, log_prior, skippable, f"align: {name}")
        out[name] = torch.cat([torch.from_numpy(a[0::2]) for a in found])
        save_tensors({"pointers": out[name]}, paths[name])
    return out


def longest_rest(pointers: torch.Tensor, offsets: torch.Tensor, q: float = 0.999) -> int:
    """The ``q`` quantile of how many codes in a row rest on one phoneme (runs of equal
    pointers within each utterance)."""
    runs = []
    for i in range(len(offsets) - 1):
        _, counts = torch.unique_consecutive(
            pointers[offsets[i] : offsets[i + 1]], return_counts=True
        )
        runs.append(counts)
    return int(torch.quantile(torch.cat(runs).float(), q))
