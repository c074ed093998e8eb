"""Patch n' Pack sections of the bench: attention kernels over a packed row, and useful
training tokens/s of packed rows vs padded batches.

**Kernels** (:func:`kernels`). One row of ``budget`` tokens laid out as training lays it
out (clip sizes from ``plan_row`` on the mixture, placed by ``pack``; tokens after the
last clip are padding, segment id -1) and random bf16 q, k, v (1, heads, budget,
head_dim). Four ways to let each token attend only within its own clip:

* ``attend_mask``: :func:`tinysora.nn.attention.attend` (two matmuls, fp32 softmax) with
  the boolean block-diagonal mask of :func:`~tinysora.nn.attention.segment_mask` -- what
  the model runs, the baseline of every ratio;
* ``sdpa_mask``: ``F.scaled_dot_product_attention`` with the same boolean mask;
* ``flex``: ``flex_attention`` (torch.compile'd) with a ``BlockMask`` from
  ``create_block_mask`` over the segment ids: tiles of ``block_size`` x ``block_size``
  scores that are all masked are skipped;
* ``per_segment``: a Python loop over the clips, ``attend`` on each clip's slice with no
  mask (padding gets zeros): no wasted scores, the reference for what skipping could give.

The dense kernels compute budget^2 scores per head; the loop computes sum_i n_i^2
(``useful_score_fraction = sum_i n_i^2 / budget^2``). Timed in turns, in bf16 autocast:
``forward`` (no grad) and ``fwd_bwd`` (forward, then backward of ``sum(out * g)`` with a
fixed random g that is zero on padding). Ratios are time / ``attend_mask``'s time (< 1 =
faster). Every kernel's output (and, for fwd_bwd, dq, dk, dv) on the real tokens is
compared with ``attend_mask``'s: ``max |x - ref| / max |ref|`` must stay below
``BF16_RTOL``. flex_attention's compile time (first call) is reported apart; if a
flex call fails on this torch / CPU, the error string is recorded instead.

**Packed vs padded** (:func:`packed_vs_padded`). One stream of clips: ``steps`` packed
training steps, each ``rows`` rows planned with ``plan_row`` (as ``packed_steps`` does),
the clips in the order the planner emits them. Packed: the planned rows of
``token_budget`` tokens (``pack`` with the planner's rows, as ``packed_steps`` does;
per-token flow times, block-diagonal masks).
Padded: the same clips in the same order, in batches of ``batch`` clips, each batch
padded to its longest clip (segment ids 0 / -1, so attention and the loss ignore the
padding); ``batch`` is chosen so that a padded step holds about as many tokens
(padding included) as a packed step. Each step is a full optimizer step
(:func:`tinysora.bench.dit.trainer_step`). For each arrangement::

    useful tokens/s = real (non-padding) tokens of the stream / median time of all its steps
    efficiency      = real tokens / all tokens (padding included)

``packed_vs_padded_tokens_per_s`` = packed useful tokens/s / padded useful tokens/s.
Model FLOPs per pass are reported both as *useful* (each clip alone:
``dit_flops_per_sample`` of its grid, ``TEXT_TOKENS`` caption tokens) and *executed*
(dense rows: ``dit_flops_per_sample`` of a (1, 1, row length) grid with the row's text
length), showing how much the dense masked attention of long packed rows costs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tinysora.bench.dit import TEXT_TOKENS, token_grid, trainer_step
from tinysora.bench.timing import measure_interleaved
from tinysora.data.packing import PAD, Mixture, Packed, pack, plan_row
from tinysora.device import autocast
from tinysora.diffusion.flow import add_noise, flow_loss, sample_timesteps, velocity_target
from tinysora.dit.flops import dit_flops_per_sample
from tinysora.dit.model import DiT, DiTConfig
from tinysora.dit.patchify import grid_positions
from tinysora.nn.attention import attend, segment_mask
from tinysora.perf import measure
from tinysora.train.recipe import DiTRecipe
from tinysora.train.steps import packed_loss
from tinysora.train.trainer import Trainer, step_rng

KERNELS = ("attend_mask", "sdpa_mask", "flex", "per_segment")
BASELINE = "attend_mask"
BF16_RTOL = 2e-2  # max |x - ref| / max |ref| allowed between kernels in bf16
TARGET_RATIO = 1.5  # target: packed useful tokens/s >= 1.5 x padded


# ----------------------------------------------------------------------------- kernels


def packed_row(mixture: Mixture, budget: int, seed: int = 0) -> Packed:
    """One row of ``budget`` tokens as training packs it: ``plan_row`` sizes placed by
    ``pack`` (1-channel dummy tokens; only ``segments`` and ``places`` matter)."""
    sizes = plan_row(mixture, budget, step_rng(seed, 0))
    lengths = [mixture.tokens(*size) for size in sizes]
    caption, caption_mask = torch.zeros(1, 1), torch.ones(1, dtype=torch.bool)
    packed = pack(
        [torch.zeros(n, 1) for n in lengths],
        [torch.zeros(n, 3, dtype=torch.long) for n in lengths],
        [caption] * len(lengths),
        [caption_mask] * len(lengths),
        budget,
    )
    assert packed.tokens.shape[0] == 1, "plan_row sizes fill exactly one row"
    return packed


def per_segment_attend(q, k, v, spans: list[tuple[int, int]]) -> torch.Tensor:
    """``attend`` on each clip's slice alone; q, k, v (B, h, N, hd), ``spans`` the
    (start, length) of the clips in order, covering [0, sum lengths); padding -> zeros."""
    pieces = [
        attend(q[:, :, s : s + n], k[:, :, s : s + n], v[:, :, s : s + n], None)  # (B, h, n, hd)
        for s, n in spans
    ]
    pad = q.shape[2] - sum(n for _, n in spans)
    if pad:
        pieces.append(q.new_zeros(*q.shape[:2], pad, v.shape[-1]))
    return torch.cat(pieces, dim=2)  # (B, h, N, hd)


def flex_kernel(segments: torch.Tensor):
    """(compiled flex_attention call, its BlockMask, the mask-building function) for
    segment ids (B, N): a query sees a key iff both have the same segment id."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def same_clip(b, h, q_idx, kv_idx):
        return segments[b, q_idx] == segments[b, kv_idx]

    b, n = segments.shape

    def build():
        return create_block_mask(same_clip, B=b, H=None, Q_LEN=n, KV_LEN=n, device="cpu")

    block_mask = build()
    compiled = torch.compile(flex_attention, dynamic=False)
    return (lambda q, k, v: compiled(q, k, v, block_mask=block_mask)), block_mask, build


def _tiles_skipped(block_mask, n: int) -> float:
    """Fraction of the score tiles (block_size x block_size; ceil(n / block_size)^2 per
    row and head) that flex_attention skips because every score in them is masked."""
    computed = int(block_mask.kv_num_blocks.sum())  # kv_num_blocks: (B, H, query tiles)
    if block_mask.full_kv_num_blocks is not None:  # tiles with no masked score, apart
        computed += int(block_mask.full_kv_num_blocks.sum())
    total = block_mask.kv_num_blocks.numel() * math.ceil(n / block_mask.BLOCK_SIZE[1])
    return 1 - computed / total


def _rel_diff(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x - ref| / max |ref| (float32)."""
    x, ref = x.float(), ref.float()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _error(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:400]


def kernels(
    mixture: Mixture,
    budget: int,
    heads: int,
    head_dim: int,
    warmup: int = 2,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Time the four block-diagonal attention kernels over one packed row (module doc)."""
    packed = packed_row(mixture, budget, seed)
    segments, valid = packed.segments, packed.valid[0]  # (1, N), (N,)
    spans = sorted((start, n) for _, start, n in packed.places)
    mask = segment_mask(segments)  # (1, 1, N, N)
    g = torch.Generator().manual_seed(seed)
    shape = (1, heads, budget, head_dim)
    q, k, v = (torch.randn(shape, generator=g).to(torch.bfloat16) for _ in range(3))
    grad_out = torch.randn(shape, generator=g).to(torch.bfloat16) * valid[:, None]  # 0 on padding

    calls = {
        "attend_mask": lambda q, k, v: attend(q, k, v, mask),
        "sdpa_mask": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        "per_segment": lambda q, k, v: per_segment_attend(q, k, v, spans),
    }
    flex: dict[str, Any] = {"error_forward": None, "error_fwd_bwd": None}
    try:
        flex_call, block_mask, build_mask = flex_kernel(segments)
        flex["block_size"] = list(block_mask.BLOCK_SIZE)
        flex["tiles_skipped"] = _tiles_skipped(block_mask, budget)
        flex["block_mask_build"] = measure(build_mask, 1, min(repeats, 3))
        calls["flex"] = flex_call
    except Exception as e:  # noqa: BLE001 -- any failure of flex is a result, not a crash
        flex["error_forward"] = flex["error_fwd_bwd"] = _error(e)

    def forward(call):
        def run():
            with torch.no_grad(), autocast():
                return call(q, k, v)

        return run

    leaves = {name: [x.detach().clone().requires_grad_() for x in (q, k, v)] for name in calls}

    def fwd_bwd(name):
        def run():
            qg, kg, vg = leaves[name]
            for x in (qg, kg, vg):
                x.grad = None
            with autocast():
                out = calls[name](qg, kg, vg)
            out.backward(grad_out)
            return out

        return run

    # Forward first, fwd_bwd after: a failed flex call can leave dynamo running
    # flex_attention eagerly (its slow reference path) for the calls that follow.
    outputs = _first_calls({n: forward(f) for n, f in calls.items()}, flex, "forward")
    t_fwd = measure_interleaved({n: forward(calls[n]) for n in outputs}, warmup, repeats)
    fwd_bwd_done = _first_calls({n: fwd_bwd(n) for n in calls}, flex, "fwd_bwd")
    t_fwd_bwd = measure_interleaved({n: fwd_bwd(n) for n in fwd_bwd_done}, warmup, repeats)

    agreement = {}
    for name in outputs:
        ref = outputs[BASELINE][..., valid, :]
        row = {"output_rel_diff": _rel_diff(outputs[name][..., valid, :], ref)}
        if name in fwd_bwd_done:
            row["grad_rel_diff"] = max(  # dq, dk, dv
                _rel_diff(x.grad[..., valid, :], r.grad[..., valid, :])
                for x, r in zip(leaves[name], leaves[BASELINE], strict=True)
            )
        row["agrees"] = max(row.values()) <= BF16_RTOL
        agreement[name] = row

    lengths = [n for _, n in spans]
    return {
        "budget": budget,
        "heads": heads,
        "head_dim": head_dim,
        "clip_tokens": lengths,
        "efficiency": packed.efficiency,
        "useful_score_fraction": sum(n * n for n in lengths) / budget**2,
        "dtype": "bfloat16 inputs, bf16 autocast",
        "forward": t_fwd,
        "forward_vs_attend_mask": _ratios(t_fwd),
        "fastest_forward": _fastest(t_fwd),
        "fwd_bwd": t_fwd_bwd,
        "fwd_bwd_vs_attend_mask": _ratios(t_fwd_bwd),
        "fastest_fwd_bwd": _fastest(t_fwd_bwd),
        "agreement": agreement,
        "agreement_rtol": BF16_RTOL,
        "all_agree": all(row["agrees"] for row in agreement.values()),
        "flex": flex,
    }


def _first_calls(fns: dict, flex: dict, what: str) -> dict[str, Any]:
    """Call each kernel once (in ``KERNELS`` order): {name: output} of those that ran.
    flex compiles here: its first call's time goes to ``flex["compile_<what>_s"]``, an
    exception of it to ``flex["error_<what>"]``; any other kernel's exception is raised."""
    done = {}
    for name in (n for n in KERNELS if n in fns):
        t0 = time.perf_counter()
        try:
            done[name] = fns[name]()
        except Exception as e:  # noqa: BLE001 -- a failing flex is a result, not a crash
            if name != "flex":
                raise
            flex[f"error_{what}"] = _error(e)
            continue
        if name == "flex":
            flex[f"compile_{what}_s"] = time.perf_counter() - t0
    return done


def _ratios(times: dict[str, dict]) -> dict[str, float]:
    base = times[BASELINE]["median_s"]
    return {name: t["median_s"] / base for name, t in times.items()}


def _fastest(times: dict[str, dict]) -> str:
    return min(times, key=lambda name: times[name]["median_s"])


# ------------------------------------------------------------------- packed vs padded


@dataclass
class Clip:
    """One training clip as token rows: noised tokens and velocity target (n, P),
    positions (n, 3), flow time, caption states (L, Dt) with mask (L,)."""

    tokens: torch.Tensor
    target: torch.Tensor
    positions: torch.Tensor
    t: float
    text: torch.Tensor
    text_mask: torch.Tensor


@dataclass
class Padded:
    """A batch of clips padded to its longest: tokens / target (B, N, P), positions
    (B, N, 3), segments (B, N) (0 = real, PAD = padding), t (B,), text (B, L, Dt),
    text_mask (B, L)."""

    tokens: torch.Tensor
    target: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    t: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        return self.segments != PAD

    @property
    def efficiency(self) -> float:
        return float(self.valid.float().mean())


def clip_stream(mixture: Mixture, budget: int, rows: int, steps: int, seed: int = 0):
    """plans[step][row] = the sizes (frames, height, width) ``plan_row`` chose for that
    row, with the step's own random stream (``train.trainer.step_rng``, as
    ``packed_steps``)."""
    plans = []
    for step in range(steps):
        rng = step_rng(seed, step)
        plans.append([plan_row(mixture, budget, rng) for _ in range(rows)])
    return plans


def make_clips(
    cfg: DiTConfig, sizes: list[tuple[int, int, int]], recipe: DiTRecipe, seed: int = 0
) -> list[Clip]:
    """Random latent tokens for clips of ``sizes`` (timings do not depend on the values),
    flow times from the recipe (shifted by each clip's token count), ``TEXT_TOKENS`` real
    caption tokens of ``text_max_length``."""
    g = torch.Generator().manual_seed(seed)
    patch_dim = cfg.in_channels * math.prod(cfg.patch)
    text_len = recipe.pipeline.text_max_length
    grids = [token_grid(cfg, *size) for size in sizes]
    counts = torch.tensor([math.prod(grid) for grid in grids])
    times = sample_timesteps(len(sizes), counts, recipe.flow, g)
    clips = []
    for grid, t in zip(grids, times.tolist(), strict=True):
        n = math.prod(grid)
        x0, noise = torch.randn(n, patch_dim, generator=g), torch.randn(n, patch_dim, generator=g)
        clips.append(
            Clip(
                tokens=add_noise(x0, t, noise),
                target=velocity_target(x0, noise),
                positions=grid_positions(grid, cfg.time_span),
                t=t,
                text=torch.randn(text_len, cfg.text_dim, generator=g),
                text_mask=torch.arange(text_len) < min(TEXT_TOKENS, text_len),
            )
        )
    return clips


def packed_batch(rows: list[list[Clip]], budget: int):
    """(Packed, target (R, budget, P), per-token t (R, budget), loss mask (R, budget)) of
    one step: exactly the planner's rows."""
    clips = [c for row in rows for c in row]
    ends = [sum(len(r) for r in rows[: i + 1]) for i in range(len(rows))]
    planned = [list(range(end - len(row), end)) for end, row in zip(ends, rows, strict=True)]
    packed = pack(
        [c.tokens for c in clips],
        [c.positions for c in clips],
        [c.text for c in clips],
        [c.text_mask for c in clips],
        budget,
        rows=planned,
    )
    t = packed.per_token(torch.tensor([c.t for c in clips]))
    return packed, packed.scatter([c.target for c in clips]), t, packed.valid


def padded_batch(clips: list[Clip]) -> Padded:
    """Clips batched as they come, each padded to the longest one of the batch."""
    b, n = len(clips), max(len(c.tokens) for c in clips)
    out = Padded(
        tokens=clips[0].tokens.new_zeros(b, n, clips[0].tokens.shape[1]),
        target=clips[0].target.new_zeros(b, n, clips[0].target.shape[1]),
        positions=torch.zeros(b, n, 3),
        segments=torch.full((b, n), PAD, dtype=torch.long),
        t=torch.tensor([c.t for c in clips]),
        text=torch.stack([c.text for c in clips]),  # (B, L, Dt)
        text_mask=torch.stack([c.text_mask for c in clips]),  # (B, L)
    )
    for i, c in enumerate(clips):
        k = len(c.tokens)
        out.tokens[i, :k], out.target[i, :k] = c.tokens, c.target
        out.positions[i, :k], out.segments[i, :k] = c.positions, 0
    return out


def packed_step_loss(model: DiT, batch) -> torch.Tensor:
    return packed_loss(model, *batch)


def padded_loss(model: DiT, batch: Padded) -> torch.Tensor:
    # segments: padding attends only to padding and nothing attends to it; one caption
    # per row, so no text segments are needed
    pred = model.forward_tokens(
        batch.tokens, batch.t, batch.positions, batch.text, batch.text_mask, batch.segments
    )
    return flow_loss(pred.float(), batch.target, batch.valid)


def padded_tokens(lengths: list[int], batch: int) -> int:
    """All tokens (padding included) of consecutive batches padded to their longest."""
    return sum(
        len(lengths[i : i + batch]) * max(lengths[i : i + batch])
        for i in range(0, len(lengths), batch)
    )


def matching_batch(lengths: list[int], tokens_per_step: int) -> int:
    """The padded batch size whose mean step (padding included) is closest to
    ``tokens_per_step`` (ties: the smaller batch)."""

    def mean_step(b: int) -> float:
        return padded_tokens(lengths, b) / math.ceil(len(lengths) / b)

    return min(range(1, len(lengths) + 1), key=lambda b: (abs(mean_step(b) - tokens_per_step), b))


def packed_vs_padded(
    recipe: DiTRecipe,
    steps: int,
    budget: int | None = None,
    warmup: int = 1,
    repeats: int = 3,
    out_dir: str = ".",
    seed: int = 0,
    compile: bool | None = None,
) -> dict[str, Any]:
    """Useful training tokens/s of packed rows vs padded batches of the same clips (module doc).

    ``compile`` (None = ``recipe.train.compile``): torch.compile the DiT blocks, as
    ``train_dit`` does, for both arrangements; dynamo's caches are reset before each, so
    each compiles as a training run of its own would (packed steps differ in caption
    length and number of distinct flow times, padded steps in batch length: both get
    recompiled with dynamic sizes in their first steps). The first pass over the steps
    (compiles included) is reported as ``first_pass_s``; then ``warmup`` untimed and
    ``repeats`` timed passes, one arrangement after the other (not in turns: the compiled
    caches must not mix).
    """
    cfg, pk = recipe.model, recipe.packing
    budget = budget or pk.token_budget
    plans = clip_stream(pk.mixture, budget, pk.rows, steps, seed)
    sizes = [size for plan in plans for row in plan for size in row]  # the stream, in order
    clips = make_clips(cfg, sizes, recipe, seed)
    lengths = [len(c.tokens) for c in clips]
    real = sum(lengths)

    packed, i = [], 0
    for plan in plans:
        rows = []
        for row in plan:
            rows.append(clips[i : i + len(row)])
            i += len(row)
        packed.append(packed_batch(rows, budget))
    batch = matching_batch(lengths, pk.rows * budget)
    padded = [padded_batch(clips[i : i + batch]) for i in range(0, len(clips), batch)]

    torch.manual_seed(recipe.train.seed)
    model = DiT(cfg).train()
    threads = torch.get_num_threads()
    trainer = Trainer(model, recipe.train, out_dir, loss_fn=None, batch_fn=None)
    torch.set_num_threads(threads)  # a recipe's `threads` must not change the rest of the bench
    compiled = recipe.train.compile if compile is None else compile
    if compiled:
        model.compile_blocks()

    def timed(loss_fn, batches) -> dict[str, Any]:
        if compiled:
            torch.compiler.reset()

        def one_pass() -> None:
            for b in batches:
                trainer_step(trainer, loss_fn, b)

        t0 = time.perf_counter()
        one_pass()
        first = time.perf_counter() - t0
        return {"first_pass_s": first, "pass": measure(one_pass, warmup, repeats)}

    text_len = recipe.pipeline.text_max_length  # padded rows keep every caption slot
    useful_flops = sum(dit_flops_per_sample(cfg, token_grid(cfg, *s), TEXT_TOKENS) for s in sizes)
    # (rows, tokens per row, text tokens per row) of every step, padding included
    shapes = {
        "packed": [(p.tokens.shape[0], budget, p.text.shape[1]) for p, *_ in packed],
        "padded": [(len(b.t), b.tokens.shape[1], text_len) for b in padded],
    }
    arrangements = {"packed": (packed_step_loss, packed), "padded": (padded_loss, padded)}
    results = {}
    for name, (loss_fn, batches) in arrangements.items():
        total = sum(r * n for r, n, _ in shapes[name])
        executed = sum(r * dit_flops_per_sample(cfg, (1, 1, n), lt) for r, n, lt in shapes[name])
        t = timed(loss_fn, batches)
        pass_s = t["pass"]["median_s"]
        results[name] = {
            "steps": len(batches),
            "step_shapes": [list(shape) for shape in shapes[name]],
            "tokens": total,
            "tokens_per_step": total / len(batches),
            "efficiency": real / total,
            **t,
            "s_per_step": pass_s / len(batches),
            "useful_tokens_per_s": real / pass_s,
            "tokens_per_s": total / pass_s,
            "flops_executed_per_pass": executed,
            "useful_flops_share": useful_flops / executed,
            "useful_gflops": useful_flops / pass_s / 1e9,
        }
    results["packed"]["planned_efficiency"] = real / (steps * pk.rows * budget)
    results["padded"]["batch"] = batch
    ratio = results["packed"]["useful_tokens_per_s"] / results["padded"]["useful_tokens_per_s"]
    return {
        "model": cfg.to_dict(),
        "compiled": compiled,
        "mode": "torch.compile'd DiT blocks" if compiled else "eager",
        "step": " ".join(trainer_step.__doc__.split()),
        "mixture": pk.mixture.to_dict(),
        "token_budget": budget,
        "rows": pk.rows,
        "clips": len(clips),
        "images": sum(1 for frames, _, _ in sizes if frames == 1),
        "real_tokens": real,
        "flops_useful_per_pass": useful_flops,
        "packed": results["packed"],
        "padded": results["padded"],
        "packed_vs_padded_tokens_per_s": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
    }
