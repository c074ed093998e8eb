"""`tinysora prepare`: a folder of videos -> VAE latents + text states, in safetensors shards.

    tinysora prepare my_clips/ --out cache/ [--vae DIR] [--fps 8] [--frames 17] [--size 64x64]

Training then reads the cache (``tinysora train dit --data cache/``) instead of running
the VAE and the text encoder every step (the precomputed caches of LTX-2 and
musubi-tuner). Layout::

    CACHE/index.json             what made the cache (VAE and text encoder fingerprints,
                                 the folder settings), the finished shards and their clips,
                                 how many files are done, what was skipped and why
    CACHE/shard-00000.safetensors  per clip k: "k.mean", "k.std" (C, t, h, w) posterior of
                                 the raw latents, "k.text" (L, D), "k.mask" (L,)
    CACHE/empty.safetensors      "text", "mask" of the empty prompt (caption dropout)

**Resumable.** Shards are flushed at file boundaries, each written atomically, and only
then listed in ``index.json`` (also atomic) with the number of files done; run the
same command again after a kill and it continues with the next file. A shard written
but not yet listed is never read and is overwritten. A cache made with another VAE,
text encoder or settings is refused with an error naming both.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from tinysora.data.folder import FolderConfig, Skipped, VideoFolder, skip_summary
from tinysora.device import autocast, resolve_device
from tinysora.errors import UserError
from tinysora.io.atomic import atomic_write_text
from tinysora.io.checkpoint import (
    fingerprint,
    load_pretrained,
    load_tensors,
    resolve_model_dir,
    save_tensors,
)
from tinysora.io.frames import frames_to_tensor
from tinysora.text.encoder import TextEncoder
from tinysora.vae.model import VideoVAE

FORMAT = 1
INDEX = "index.json"
SHARD_CLIPS = 64  # clips per shard (a shard closes at the first file boundary after this)


class CacheError(UserError, ValueError):
    """A cache that cannot be used or continued (the message names both sides and the fix)."""


def vae_identity(vae_dir: Path, vae: VideoVAE) -> dict:
    cfg = vae.config
    return {
        "path": str(vae_dir),
        "fingerprint": fingerprint(vae_dir),
        "latent_channels": cfg.latent_channels,
        "shift_factor": cfg.shift_factor,
        "scaling_factor": cfg.scaling_factor,
    }


def text_identity(encoder: TextEncoder) -> dict:
    return {
        "name": encoder.path.name,
        "fingerprint": fingerprint(encoder.path),
        "max_length": encoder.max_length,
        "dim": encoder.dim,
        "subjects": encoder.subjects,
    }


def _same(kind: str, made: dict, now: dict, cache: Path) -> None:
    if made["fingerprint"] != now["fingerprint"]:
        raise CacheError(
            f"'{cache}' was made with the {kind} {made.get('path') or made.get('name')} "
            f"(fingerprint {made['fingerprint']}), not {now.get('path') or now.get('name')} "
            f"({now['fingerprint']}); prepare the data again with this {kind}, or use that one"
        )


@dataclass
class PrepareReport:
    """What a ``prepare`` run left in the cache, and how fast this run encoded."""

    clips: int  # in the cache
    files: int
    encoded: int  # clips encoded by this run (the rest were there from an earlier run)
    seconds: float
    skipped: list[Skipped]

    def line(self) -> str:
        rate = self.encoded / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.clips} clips from {self.files} files ({self.encoded} encoded in "
            f"{self.seconds:.1f} s, {rate:.2f} clips/s){skip_summary(self.skipped)}"
        )


def prepare(
    data: str | os.PathLike,
    out: str | os.PathLike,
    folder: FolderConfig | None = None,
    vae_dir: str | os.PathLike | None = None,
    text_encoder: TextEncoder | None = None,
    shard_clips: int = SHARD_CLIPS,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> PrepareReport:
    """Encode the clips of folder ``data`` into the cache ``out`` (continuing one there), on
    ``device`` (default: CUDA when there is a GPU)."""
    device = resolve_device(device)
    out = Path(out)
    folder = folder or FolderConfig()
    source = VideoFolder(data, folder)  # a bad folder fails before any model loads
    vae_dir = resolve_model_dir(vae_dir, "vae")
    vae = load_pretrained(VideoVAE, vae_dir)
    encoder = text_encoder or TextEncoder()
    made = {
        "format": FORMAT,
        "vae": vae_identity(vae_dir, vae),
        "text_encoder": text_identity(encoder),
        "folder": folder.to_dict(),
    }
    vae.to(device)
    encoder.to(device)
    index = _start_index(out, made)
    done = index["files_done"]
    if done == 0:  # a new cache: the caption rows skipped before any file is read
        index["skipped"] = [[s.path, s.reason] for s in source.skipped]
    if not (out / "empty.safetensors").is_file():
        text, mask = encoder([""])
        save_tensors(
            {"text": text[0].to(torch.bfloat16), "mask": mask[0]}, out / "empty.safetensors"
        )
    t0 = time.perf_counter()
    pending: list[tuple[dict, dict[str, torch.Tensor]]] = []  # (clip info, tensors)
    new_clips = 0
    bar = tqdm(
        total=len(source.entries), initial=done, desc="prepare", unit="file", disable=not progress
    )
    for number, entry in enumerate(source.entries):
        if number < done:
            continue
        skipped_before = len(source.skipped)
        for clip in source.clips_of(entry):
            pending.append(_encode(vae, encoder, clip, source.root))
            new_clips += 1
        index["skipped"] += [[s.path, s.reason] for s in source.skipped[skipped_before:]]
        index["files_done"] = number + 1
        if len(pending) >= shard_clips:
            _flush(out, index, pending)
            pending = []
        bar.update(1)
    bar.close()
    if pending or not index["complete"]:
        _flush(out, index, pending, complete=True)
    clips = sum(len(s["clips"]) for s in index["shards"])
    files = len({c["source"] for s in index["shards"] for c in s["clips"]})
    skipped = [Skipped(p, r) for p, r in index["skipped"]]
    return PrepareReport(clips, files, new_clips, time.perf_counter() - t0, skipped)


def _start_index(out: Path, made: dict) -> dict:
    path = out / INDEX
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        return {**made, "shards": [], "files_done": 0, "skipped": [], "complete": False}
    index = json.loads(path.read_text())
    _same("VAE", index["vae"], made["vae"], out)
    _same("text encoder", index["text_encoder"], made["text_encoder"], out)
    if index["folder"] != made["folder"]:
        raise CacheError(
            f"'{out}' was prepared with {index['folder']}, not {made['folder']}; "
            "use the same settings to continue it, or another --out"
        )
    return index


def _encode(vae: VideoVAE, encoder: TextEncoder, clip, root: Path) -> tuple[dict, dict]:
    device = next(vae.parameters()).device
    with torch.no_grad(), autocast(device):
        posterior = vae.encode(frames_to_tensor(clip.frames)[None].to(device), chunk_frames=16)
    text, mask = encoder([clip.text])
    tensors = {
        "mean": posterior.mean[0].float().to(torch.bfloat16).cpu(),
        "std": posterior.logvar[0].float().mul(0.5).exp().to(torch.bfloat16).cpu(),
        "text": text[0].to(torch.bfloat16).cpu(),
        "mask": mask[0].cpu(),
    }
    info = {
        "source": str(clip.source.relative_to(root)),
        "start": clip.start,
        "text": clip.text,
        "shape": list(tensors["mean"].shape),
    }
    return info, tensors


def _flush(out: Path, index: dict, pending: list, complete: bool = False) -> None:
    """Write ``pending`` clips as the next shard, then the index that lists it."""
    if pending:
        name = f"shard-{len(index['shards']):05d}.safetensors"
        tensors = {f"{k}.{key}": v for k, (_, t) in enumerate(pending) for key, v in t.items()}
        save_tensors(tensors, out / name)
        index["shards"].append({"file": name, "clips": [info for info, _ in pending]})
    index["complete"] = complete
    atomic_write_text(out / INDEX, json.dumps(index, indent=1))


class LatentCache:
    """A finished cache, read clip by clip from memory-mapped shards (memory does not grow
    with the cache's size)."""

    def __init__(self, directory: str | os.PathLike):
        self.root = Path(directory)
        path = self.root / INDEX
        if not path.is_file():
            raise CacheError(
                f"'{self.root}' is not a prepared cache (no {INDEX}); make one with "
                "`tinysora prepare DATA --out CACHE`"
            )
        self.index = json.loads(path.read_text())
        if not self.index["complete"]:
            raise CacheError(
                f"'{self.root}' is not finished; run the same `tinysora prepare` again to "
                "complete it"
            )
        self.items = [
            (s["file"], k, info) for s in self.index["shards"] for k, info in enumerate(s["clips"])
        ]
        if not self.items:
            raise CacheError(f"'{self.root}' holds no clips (see the skipped files in {INDEX})")
        empty = load_tensors(self.root / "empty.safetensors")
        self.empty_text, self.empty_mask = empty["text"], empty["mask"]
        self._shards: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def captions(self) -> list[str]:
        """Every clip's caption: the words a model trained on this cache knows."""
        return [info["text"] for _, _, info in self.items]

    @property
    def vae(self) -> dict:
        return self.index["vae"]

    def shapes(self) -> set[tuple[int, ...]]:
        """The distinct latent shapes (C, t, h, w) of the clips."""
        return {tuple(info["shape"]) for _, _, info in self.items}

    def clip(self, i: int) -> dict[str, torch.Tensor]:
        """Clip ``i``: ``mean``, ``std`` (C, t, h, w), ``text`` (L, D), ``mask`` (L,)."""
        file, k, _ = self.items[i]
        if file not in self._shards:
            self._shards[file] = safe_open(str(self.root / file), framework="pt")
        shard = self._shards[file]
        return {key: shard.get_tensor(f"{k}.{key}") for key in ("mean", "std", "text", "mask")}

    def check(
        self, vae_dir: Path, encoder_dir: Path, text_max_length: int, subjects: bool = False
    ) -> None:
        """Refuse to train with a VAE or text encoder other than the ones that made it."""
        _same(
            "VAE", self.vae, {"path": str(vae_dir), "fingerprint": fingerprint(vae_dir)}, self.root
        )
        made = self.index["text_encoder"]
        now = {"name": encoder_dir.name, "fingerprint": fingerprint(encoder_dir)}
        _same("text encoder", made, now, self.root)
        if made["max_length"] != text_max_length:
            raise CacheError(
                f"'{self.root}' holds text states of {made['max_length']} tokens; the recipe's "
                f"[pipeline] text_max_length is {text_max_length}: make them equal"
            )
        made_subjects = made.get("subjects", False)  # caches from before text_subjects
        if made_subjects != subjects:
            raise CacheError(
                f"'{self.root}' holds text states encoded with subjects={made_subjects}; "
                f"the recipe's [pipeline] text_subjects is {subjects}: make them equal"
            )
