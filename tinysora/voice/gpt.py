"""The GPT stage (text2semantic, GPT-SoVITS's s1), sized for a 2-core CPU: phonemes ->
semantic codes, continuing a reference clip's codes in its voice and pace.

One decoder-only transformer over one sequence per example::

    [ phonemes of (reference transcript +) text | <bos> reference codes  target codes <eos> ]
      bidirectional among themselves              causal; every code sees all phonemes

The phoneme prefix attends only to itself (a text encoder in the same weights), the code
part is causal and sees the whole prefix: a prefix LM. Positions are sinusoidal and
counted per segment (phonemes from 0, codes from 0), plus a learned segment vector.

Training (``tinysora train voice-gpt``) pairs an utterance with one or two others of the
same speaker as its prompt; inference fills the prompt with the reference clip's codes
(and its transcript's phonemes when given) and samples the rest with a KV cache:
``sample_codes`` (top-k / top-p / temperature / repetition penalty). The guards against
GPT-SoVITS's reported failures live there too: no <eos> before a minimum number of codes
per phoneme (truncation, swallowed endings), a hard maximum (endless output), and a loop
detector (``find_loop``) that the speech pipeline answers by resampling.

tinysora's addition (``GPTConfig.max_advance``): a phoneme pointer. Each code's input also
carries the phoneme it voices (the corpus force-aligned by ``train/voice_align.py``) and
the head also predicts how far the pointer moves on; generation ends past the last
phoneme, which rules out skipped, repeated and unsaid words by construction.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from tinysora.config import Config
from tinysora.nn.attention import Attention, KVCache


@dataclass
class GPTConfig(Config):
    n_phonemes: int = 70  # the phoneme vocabulary's size (voice/phonemes.txt)
    codebook_size: int = 1024  # the content codec's codes; <eos> and <bos> follow them
    dim: int = 256
    layers: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    # codes per phoneme of the training corpus (its 0.5th and 99.5th percentiles, set by
    # the trainer): the bounds a generation is held to
    min_codes_per_phoneme: float = 0.6
    max_codes_per_phoneme: float = 3.0
    # the phoneme pointer (0 = off, plain s1): each code's input also carries the phoneme
    # it voices (the corpus aligned by train/voice_align.py), and the head also says how
    # far the pointer moves on after the code, 0..max_advance phonemes; generation ends
    # when it moves past the last phoneme, so no word can be skipped, said twice or left
    # unsaid, and a pointer resting ``max_dwell`` codes on one phoneme is moved on
    max_advance: int = 0
    max_dwell: int = 25

    @property
    def outputs(self) -> int:
        """The head's width: the next code or <eos>, then (pointer) the advance's classes."""
        return self.codebook_size + 1 + (self.max_advance + 1 if self.max_advance else 0)

    @property
    def eos(self) -> int:
        return self.codebook_size

    @property
    def bos(self) -> int:
        return self.codebook_size + 1


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., ) integer positions -> (..., dim) sin/cos features (Transformer's)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device) / half)
    angle = positions.float()[..., None] * freq  # (..., half)
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


def prefix_lm_mask(phone_lengths: torch.Tensor, p: int, code_lengths: torch.Tensor, t: int):
    """(B, 1, P + T, P + T) bool, True = may attend: phoneme queries see the valid
    phonemes; code queries see the valid phonemes and the codes up to themselves."""
    n = p + t
    j = torch.arange(n, device=phone_lengths.device)
    valid = torch.cat(
        [j[None, :p] < phone_lengths[:, None], (j[None, p:] - p) < code_lengths[:, None]], dim=1
    )  # (B, N)
    code_key, code_query = j >= p, (j >= p)[:, None]
    allowed = ~code_key[None, :] | (code_query & (j[None, :] <= j[:, None]))  # (N, N)
    return (allowed[None] & valid[:, None, :])[:, None]


class GPTBlock(nn.Module):
    """Pre-norm attention + MLP, dropout on both residual branches (none inside attention:
    it would force SDPA's slow path); both output projections start at zero."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qk_norm=False, fused=True, out_name="proj")
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)
        for zero in (self.attn.proj, self.mlp[2]):
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)

    def forward(self, x, mask=None, cache: KVCache | None = None, weights: bool = False):
        """x (B, N, D); ``cache``: the layer's keys and values of earlier positions
        (sampling); ``weights``: also return the attention probabilities (B, H, N, N)."""
        a = self.attn(self.norm1(x), mask=mask, cache=cache, sdpa=True, probs=weights)
        a, probs = a if weights else (a, None)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return (x, probs) if weights else x


class Text2Semantic(nn.Module):
    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.phone_emb = nn.Embedding(c.n_phonemes, c.dim)
        self.code_emb = nn.Embedding(c.codebook_size + 2, c.dim)  # codes, <eos>, <bos>
        self.segment = nn.Parameter(torch.zeros(2, c.dim))  # phoneme / code segment
        self.blocks = nn.ModuleList(
            GPTBlock(c.dim, c.heads, c.mlp_ratio, c.dropout) for _ in range(c.layers)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.outputs)
        if c.max_advance:  # the embedded phoneme under the pointer, into a code's input
            self.pointer_in = nn.Linear(c.dim, c.dim)
        # embeddings keep nn.Embedding's N(0, 1): the same scale as the sinusoids, so the
        # token, not its position, leads from the start (at std 0.02 training sat for
        # hundreds of steps at the codes' unigram entropy)

    def embed_phonemes(self, phonemes: torch.Tensor) -> torch.Tensor:
        """(B, P) ids -> (B, P, D)."""
        pos = torch.arange(phonemes.shape[1], device=phonemes.device)
        return self.phone_emb(phonemes) + sinusoid(pos, self.config.dim) + self.segment[0]

    def embed_codes(self, codes: torch.Tensor, first: int = 0) -> torch.Tensor:
        """(B, T) code-side ids (codes, <bos>) at positions first.. -> (B, T, D)."""
        pos = torch.arange(first, first + codes.shape[1], device=codes.device)
        return self.code_emb(codes) + sinusoid(pos, self.config.dim) + self.segment[1]

    def pointed(self, phones: torch.Tensor, pointers: torch.Tensor) -> torch.Tensor:
        """(B, T, D) input of the pointer: embedded phonemes (B, P, D) at ``pointers``
        (B, T) (-1: none, zeros)."""
        index = pointers.clamp(0, phones.shape[1] - 1)[..., None].expand(-1, -1, phones.shape[2])
        return self.pointer_in(phones.gather(1, index)) * (pointers >= 0)[..., None]

    def forward(
        self, phonemes, phone_lengths, codes, code_lengths, attention_layers: int = 0, pointers=None
    ):
        """Teacher forcing. phonemes (B, P), codes (B, T) = [<bos>, c_0 .. c_{T-2}] (the
        inputs), lengths (B,); ``pointers`` (B, T) with a pointer: the phoneme each
        position's *target* code voices (-1: none). -> logits (B, T, config.outputs) of
        the next code (and the pointer's advance after it); with ``attention_layers`` = k
        also the first k layers' attention of the code queries over the phonemes,
        [(B, H, T, P)] (for a guided-attention loss)."""
        p = phonemes.shape[1]
        phones, code_x = self.embed_phonemes(phonemes), self.embed_codes(codes)
        if pointers is not None:
            code_x = code_x + self.pointed(phones, pointers)
        x = torch.cat([phones, code_x], dim=1)
        mask = prefix_lm_mask(phone_lengths, p, code_lengths, codes.shape[1])
        maps = []
        for i, block in enumerate(self.blocks):
            if i < attention_layers:
                x, probs = block(x, mask, weights=True)
                maps.append(probs[:, :, p:, :p])
            else:
                x = block(x, mask)
        logits = self.head(self.norm(x[:, p:]))
        return (logits, maps) if attention_layers else logits

    @torch.no_grad()
    def stream(
        self, phonemes: torch.Tensor, prompt: torch.Tensor, pointer: int | None = None
    ) -> Iterator[torch.Tensor]:
        """KV-cached decoding of one sequence. phonemes (P,), prompt (T0,) codes;
        ``pointer``: (a pointer model) the phoneme the first new code voices. Yields the
        logits (config.outputs,) on the CPU (where the sampler draws), then expects
        ``.send((code, pointer))`` of the chosen code and the phoneme the next code voices
        (None without a pointer)."""
        dev = phonemes.device
        caches = [KVCache() for _ in self.blocks]
        codes = torch.cat([torch.tensor([self.config.bos], device=dev), prompt])
        phones, code_x = self.embed_phonemes(phonemes[None]), self.embed_codes(codes[None])
        if pointer is not None:  # the prompt's codes carry none; the last input predicts
            pointers = torch.full((1, len(codes)), -1, device=dev)  # the first new code
            pointers[0, -1] = pointer
            code_x = code_x + self.pointed(phones, pointers)
        x = torch.cat([phones, code_x], 1)
        p = phonemes.shape[0]
        mask = prefix_lm_mask(
            torch.tensor([p], device=dev), p, torch.tensor([len(codes)], device=dev), len(codes)
        )
        position = len(codes)
        while True:
            for block, cache in zip(self.blocks, caches, strict=True):
                x = block(x, mask, cache)
            code, pointer = yield self.head(self.norm(x[0, -1])).float().cpu()
            x, mask = self.embed_codes(torch.tensor([[code]], device=dev), position), None
            if pointer is not None:
                x = x + self.pointed(phones, torch.tensor([[pointer]], device=dev))
            position += 1


def guided_attention_loss(
    maps: list[torch.Tensor],
    phone_lengths: torch.Tensor,
    code_lengths: torch.Tensor,
    free: torch.Tensor,
    sigma: float,
    head: int = 0,
) -> torch.Tensor:
    """DC-TTS's guided attention on one head of each map (B, H, T, P): attention of code
    i to phoneme j costs 1 - exp(-(j / P - (i - f) / (T - f))^2 / 2 sigma^2), near zero on
    the diagonal, over the head's attention to the phonemes renormalized to sum to 1;
    code queries before ``free`` f (a prompt without its phonemes) and padding cost
    nothing. Returns the mean cost per scored code query."""
    _, _, t, p = maps[0].shape
    dev = maps[0].device
    i = torch.arange(t, device=dev)[None, :, None].float()  # (1, T, 1)
    j = torch.arange(p, device=dev)[None, None, :].float()  # (1, 1, P)
    f = free.to(dev).float()[:, None, None]
    span = (code_lengths.to(dev).float()[:, None, None] - f).clamp(min=1)
    target = (i - f) / span
    cost = 1 - torch.exp(
        -((j / phone_lengths.to(dev).float()[:, None, None] - target) ** 2) / (2 * sigma**2)
    )
    rows = (i >= f) & (i < code_lengths.to(dev)[:, None, None])  # (B, T, 1)
    cost = cost * rows * (j < phone_lengths.to(dev)[:, None, None])
    total = 0.0
    for m in maps:  # the phoneme share of the attention, renormalized: moving mass onto
        a = m[:, head].float()  # the codes is no way out of the cost
        total = total + (a / a.sum(-1, keepdim=True).clamp(min=1e-6) * cost).sum()
    return total / (rows.sum() * len(maps)).clamp(min=1)


def filter_logits(
    logits: torch.Tensor,
    history: torch.Tensor,
    top_k: int,
    top_p: float,
    temperature: float,
    repetition_penalty: float,
) -> torch.Tensor:
    """(V,) logits -> (V,) logits for sampling: codes in ``history`` penalized (positive
    logits divided, negative multiplied by the penalty), scaled by 1 / temperature, then
    only the top-k, and of those the smallest set holding ``top_p`` of the probability."""
    logits = logits.clone()
    if repetition_penalty != 1.0 and len(history):
        seen, r = logits[history], repetition_penalty
        logits[history] = torch.where(seen > 0, seen / r, seen * r)
    logits = logits / max(temperature, 1e-5)
    if 0 < top_k < len(logits):
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = -float("inf")
    if top_p < 1.0:
        ordered, index = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, -1).cumsum(-1)
        drop = cumulative - torch.softmax(ordered, -1) >= top_p  # mass before it already >= p
        logits[index[drop]] = -float("inf")
    return logits


def find_loop(codes: list[int], min_period: int = 6, max_period: int = 60, repeats: int = 3):
    """The period of a block of ``min_period``..``max_period`` codes that the end of
    ``codes`` repeats ``repeats`` times in a row exactly (the loop of a stuck GPT: the same
    word or syllable again and again), else None. Runs of one code (silence) are not
    loops of this kind; the length bound stops those."""
    n = len(codes)
    for period in range(min_period, min(max_period, n // repeats) + 1):
        tail = codes[n - period :]
        if len(set(tail)) < 3:
            continue
        if all(codes[n - (r + 1) * period : n - r * period] == tail for r in range(1, repeats)):
            return period
    return None


LENGTH_MARGIN = (0.8, 1.25)  # the length guard's bounds, beyond the corpus's range


@dataclass
class SamplingConfig(Config):
    """GPT-SoVITS's knobs (api_v2 ``/tts``); the speech pipeline's defaults hold one
    (``voice.speech.SpeechConfig``). These defaults are what measured best with the
    bundled pointer model (weights/README.md): greedy codes, no repetition penalty (the
    pointer, not sampling, keeps it from looping; the seed still varies the pointer's
    moves, the rhythm). GPT-SoVITS's own: top_k 15, repetition_penalty 1.35."""

    top_k: int = 1  # 0 = off
    top_p: float = 1.0
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    history: int = 50  # the repetition penalty looks this many codes back


@dataclass
class Generation:
    codes: list[int]
    stop: str  # "eos", "limit" (hit the maximum) or "loop" (a loop was cut off)


def sample_codes(
    model: Text2Semantic,
    phonemes: torch.Tensor,
    prompt: torch.Tensor,
    n_target_phonemes: int,
    sampling: SamplingConfig,
    generator: torch.Generator,
) -> Iterator[int | Generation]:
    """Sample target codes one at a time (yielded as ints), then a ``Generation``.

    Guards: <eos> is masked until 0.8 x ``min_codes_per_phoneme x n_target_phonemes``
    codes; generation stops at 1.25 x ``max_codes_per_phoneme x n_target_phonemes``
    ("limit"; the margins leave the slowest and fastest voices room); a loop
    (``find_loop``) is cut off at its first repeat and stops it ("loop").

    A pointer model (``max_advance``) ends where its pointer moves past the last phoneme
    ("eos"; its <eos> logit is not used), and a pointer resting ``max_dwell`` codes on one
    phoneme moves on."""
    c = model.config
    low = int(LENGTH_MARGIN[0] * c.min_codes_per_phoneme * n_target_phonemes)
    high = max(low + 1, math.ceil(LENGTH_MARGIN[1] * c.max_codes_per_phoneme * n_target_phonemes))
    out: list[int] = []
    pointer = len(phonemes) - n_target_phonemes if c.max_advance else None
    dwell = 0
    steps = model.stream(phonemes, prompt, pointer)
    logits = next(steps)
    while True:
        logits, advance = logits[: c.eos + 1], logits[c.eos + 1 :]
        if len(out) < low or pointer is not None:  # before the filters: top-k picks codes
            logits[c.eos] = -float("inf")
        history = torch.tensor(out[-sampling.history :], dtype=torch.long)
        logits = filter_logits(
            logits,
            history,
            sampling.top_k,
            sampling.top_p,
            sampling.temperature,
            sampling.repetition_penalty,
        )
        probs = torch.softmax(logits, -1)
        code = int(torch.multinomial(probs, 1, generator=generator))
        if code == c.eos:
            steps.close()
            yield Generation(out, "eos")
            return
        out.append(code)
        if pointer is not None:
            move = int(
                torch.multinomial(
                    torch.softmax(advance / max(sampling.temperature, 1e-5), -1),
                    1,
                    generator=generator,
                )
            )
            move = max(move, 1) if dwell + 1 >= c.max_dwell else move
            dwell = 0 if move else dwell + 1
            pointer += move
            if pointer >= len(phonemes):
                steps.close()
                yield code
                yield Generation(out, "eos")
                return
        period = find_loop(out)
        if period is not None:
            del out[-(2 * period) :]  # keep one copy of the repeated block
            steps.close()
            yield Generation(out, "loop")
            return
        yield code
        if len(out) >= high:
            steps.close()
            yield Generation(out, "limit")
            return
        logits = steps.send((code, pointer))
