"""One training loop for every model: bf16 autocast (where the CPU has bf16, see
``tinysora.device``), AdamW, warmup + cosine, grad clipping, EMA, a progress bar with loss
and ETA, a JSONL log, atomic checkpoints and resume.

A model plugs in with two functions:

* ``batch_fn(step) -> batch``: deterministic in ``step`` (so a resumed run sees the
  same data as an uninterrupted one);
* ``loss_fn(model, batch) -> (loss, {name: float})``.

Networks trained beside the model with their own optimizers (a GAN's discriminators)
come as an :class:`Auxiliary`: the loss steps them between its parts, the trainer keeps
their lr on the schedule and their weights and optimizers in the checkpoints.

Checkpoints are directories ``<out>/checkpoints/step_<N>/`` holding
``model.safetensors``, ``ema.safetensors``, ``optimizer.safetensors`` and
``state.json``; a directory is written under a temporary name and renamed when
complete, then ``<out>/checkpoints/latest`` (a text file) is switched to it
atomically. A run killed at any moment resumes from the last complete one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from tinysora.config import Config, ConfigError
from tinysora.device import autocast, to_device
from tinysora.io.atomic import atomic_dir, atomic_write_text
from tinysora.io.checkpoint import CheckpointError, check_state, load_tensors, save_tensors
from tinysora.train import distributed
from tinysora.train.board import Board
from tinysora.worlds.shapes import SplitMix64


@dataclass
class TrainConfig(Config):
    steps: int = 10_000
    lr: float = 5e-4
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8  # AdamW's (VITS's GAN trains with 1e-9)
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 = no EMA
    bf16: bool = True  # bf16 autocast where the CPU computes bf16 natively (tinysora.device)
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 500
    seed: int = 0
    threads: int = 0  # torch threads; 0 = leave torch's default
    # matmul peak (compute dtype) that the log's MFU divides by; 0 = measured once per
    # machine and cached (tinysora.perf.peak_flops)
    peak_tflops: float = 0.0
    # torch.compile the model's repeated blocks (DiT): fuses the elementwise work that
    # dominates small-width steps on CPU (XS/2 fwd+bwd 0.42 -> 0.24 s, ~15 s to compile)
    compile: bool = False
    # under torchrun: "ddp" (a model copy per process) or "fsdp" (FSDP2: parameters,
    # gradients and optimizer state sharded over the processes; train.distributed)
    parallel: str = "ddp"
    # TensorBoard event files beside log.jsonl (the log's scalars; sample videos every
    # sample_every steps where the recipe has prompts to sample; 0 = none)
    tensorboard: bool = True
    sample_every: int = 0


DATA_STREAM = 7  # the SplitMix64 stream of a step's data draws (clips, captions)


def step_rng(seed: int, step: int) -> SplitMix64:
    """The data draws of one training step (which clips, which caption paraphrases)."""
    return SplitMix64(seed, step, DATA_STREAM)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The torch.Generator of one training step (noise, flow times, caption dropout, tasks,
    VAE posterior samples): a function of (seed, step), so a resumed run repeats an
    uninterrupted one."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def latest_checkpoint(root: Path) -> tuple[Path, dict] | None:
    """(directory, state.json) of ``root/latest``; None when there is no checkpoint."""
    latest = root / "latest"
    if not latest.is_file():
        return None
    path = root / latest.read_text().strip()
    try:
        return path, json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot resume from '{path}': {e}") from None


def init_checkpoint(run: Path, command: str) -> tuple[Path, dict]:
    """(directory, state.json) of the latest checkpoint of ``run``, the run an ``--init``
    starts from; a one-line error naming ``command`` (the kind of run) when it has none."""
    found = latest_checkpoint(Path(run) / "checkpoints")
    if found is None:
        raise CheckpointError(
            f"--init {run}: no checkpoints/latest there; point it at a "
            f"`tinysora {command}` run directory"
        )
    return found


def point_latest(root: Path, final: Path, keep: int) -> None:
    """Switch ``root/latest`` to the complete checkpoint ``final`` atomically; keep the
    newest ``keep`` checkpoint directories."""
    atomic_write_text(root / "latest", final.name + "\n")
    old = sorted(p for p in root.glob("step_*") if p.is_dir())
    for p in old[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def check_run_dir(out: Path, resume: bool) -> None:
    """Refuse to start a new run on top of an old one unless resuming."""
    if not resume and (Path(out) / "checkpoints" / "latest").exists():
        raise FileExistsError(
            f"'{out}' already holds a training run; pass --resume to continue it "
            "or choose another --out"
        )


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine from lr to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the recipe's settings; fused: one kernel for all parameters (a DiT XS/2
    step: 61 -> 16 ms on one core)."""
    return torch.optim.AdamW(
        params,
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        fused=True,
    )


class Auxiliary:
    """Networks trained in the same loop as the model, each with its own optimizer (a GAN's
    discriminators). The Trainer makes their optimizers (the model's settings), follows
    its lr schedule with them and checkpoints and resumes their weights and optimizers
    with the model's (``<name>.safetensors``, ``<name>_optimizer.safetensors``); the loss
    steps one with :meth:`update` between its parts (the discriminator's step, then the
    generator's loss against the updated discriminator). One process only."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.grad_clip = math.inf

    def bind(self, cfg: TrainConfig) -> None:
        """Make the optimizers (the Trainer calls it)."""
        if distributed.world() > 1:
            raise ConfigError("a recipe with auxiliary networks (a GAN) trains in one process")
        self.grad_clip = cfg.grad_clip
        for name, module in self.modules.items():
            params = [p for p in module.parameters() if p.requires_grad]
            self.optimizers[name] = make_optimizer(params, cfg)

    def update(self, name: str, loss: torch.Tensor) -> torch.Tensor:
        """One optimizer step of network ``name`` on ``loss``; returns its gradient norm
        (before clipping to ``grad_clip``)."""
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        optimizer.step()
        return norm


class Trainer:
    """Train ``model`` (already on its device) with ``loss_fn`` on ``batch_fn``'s batches.

    Optional: ``eval_fn(model) -> scores`` every ``eval_every`` steps; ``sample_fn(model)
    -> {name: uint8 (T, H, W, 3) frames}`` every ``sample_every`` steps into TensorBoard;
    ``flops_per_step(batch)`` and ``peak_flops`` for the log's MFU; ``tokens_per_step(batch)``
    for its tokens/s (of all processes together); ``auxiliary`` networks (a GAN's) that
    the loss steps.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        out: str | Path,
        loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, Any]]],
        batch_fn: Callable[[int], Any],
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        flops_per_step: Callable[[Any], float] | None = None,
        peak_flops: float | None = None,
        sample_fn: Callable[[nn.Module], dict[str, np.ndarray]] | None = None,
        tokens_per_step: Callable[[Any], int] | None = None,
        auxiliary: Auxiliary | None = None,
    ):
        self.model, self.cfg, self.out = model, cfg, Path(out)
        self.loss_fn, self.batch_fn, self.eval_fn = loss_fn, batch_fn, eval_fn
        self.flops_per_step, self.peak_flops = flops_per_step, peak_flops
        self.sample_fn, self.tokens_per_step = sample_fn, tokens_per_step
        self.device = next(model.parameters()).device
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # what the loss calls: DDP under torchrun, or the model sharded in place (FSDP2,
        # which swaps the parameters for shards: the optimizer is made after it)
        self.net = distributed.wrap(model, cfg.parallel)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, cfg)
        self.auxiliary = auxiliary
        if auxiliary is not None:
            auxiliary.bind(cfg)
        self.ema = (
            {k: v.detach().clone().float() for k, v in model.state_dict().items()}
            if cfg.ema_decay > 0
            else None
        )
        self.step = 0
        self.board = None  # TensorBoard events beside log.jsonl (rank 0), opened by fit()

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def save_checkpoint(self) -> Path:
        """Write checkpoint ``step_<N>`` (every rank calls it: under FSDP the whole model is
        gathered first; rank 0 writes) and keep the last ``keep_checkpoints``."""
        model = distributed.full_state(self.model)
        ema = distributed.full_tensors(self.ema) if self.ema is not None else None
        optimizer = distributed.full_optimizer_state(self.model, self.optimizer)
        final = self.ckpt_root / f"step_{self.step:08d}"
        if not distributed.is_main():
            return final
        for stale in self.ckpt_root.glob(".step_*.tmp"):  # left by a run killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_dir(final) as tmp:
            save_tensors(model, tmp / "model.safetensors")
            if ema is not None:
                save_tensors(ema, tmp / "ema.safetensors")
            opt_tensors, opt_meta = _flatten_optimizer(optimizer)
            save_tensors(opt_tensors, tmp / "optimizer.safetensors")
            state = {"step": self.step, "optimizer": opt_meta, "config": self.cfg.to_dict()}
            if self.auxiliary is not None:
                state["auxiliary"] = self._save_auxiliary(tmp)
            atomic_write_text(tmp / "state.json", json.dumps(state, indent=1))
        point_latest(self.ckpt_root, final, self.cfg.keep_checkpoints)
        return final

    def load_checkpoint(self) -> bool:
        """Resume from ``<out>/checkpoints/latest``; False if there is none."""
        found = latest_checkpoint(self.ckpt_root)
        if found is None:
            return False
        path, state = found
        weights = load_tensors(path / "model.safetensors")
        check_state(self.model.state_dict(), weights, str(path))  # (global shapes under FSDP)
        distributed.load_full_state(self.model, weights)
        if self.ema is not None and (path / "ema.safetensors").is_file():
            ema = {k: v.float() for k, v in load_tensors(path / "ema.safetensors").items()}
            self.ema = distributed.like_shards(ema, self.ema)
        optimizer = _unflatten_optimizer(load_tensors(path / "optimizer.safetensors"), state)
        distributed.load_optimizer_state(self.model, self.optimizer, optimizer)
        if self.auxiliary is not None:
            self._load_auxiliary(path, state)
        self.step = int(state["step"])
        return True

    def _save_auxiliary(self, folder: Path) -> dict:
        """The auxiliary networks' weights and optimizers into ``folder``; returns their
        optimizers' param groups (for state.json)."""
        groups = {}
        for name, module in self.auxiliary.modules.items():
            save_tensors(module.state_dict(), folder / f"{name}.safetensors")
            optimizer = self.auxiliary.optimizers[name]
            tensors, groups[name] = _flatten_optimizer(
                distributed.full_optimizer_state(module, optimizer)
            )
            save_tensors(tensors, folder / f"{name}_optimizer.safetensors")
        return groups

    def _load_auxiliary(self, path: Path, state: dict) -> None:
        for name, module in self.auxiliary.modules.items():
            if name not in state.get("auxiliary", {}):
                raise CheckpointError(f"'{path}' has no {name} (the recipe trains one)")
            weights = load_tensors(path / f"{name}.safetensors")
            check_state(module.state_dict(), weights, str(path))
            module.load_state_dict(weights)
            tensors = load_tensors(path / f"{name}_optimizer.safetensors")
            optimizer = _unflatten_optimizer(tensors, {"optimizer": state["auxiliary"][name]})
            distributed.load_optimizer_state(module, self.auxiliary.optimizers[name], optimizer)

    # ------------------------------------------------------------------ loop
    def ema_state(self) -> dict[str, torch.Tensor]:
        """EMA weights if EMA is on, else the live weights; whole tensors (under FSDP a
        collective call every rank makes)."""
        if self.ema is None:
            return distributed.full_state(self.model)
        return distributed.full_tensors(self.ema)

    def _update_ema(self) -> None:
        """ema <- ema + (1 - decay) (weights - ema), all floating tensors in one foreach call."""
        with torch.no_grad():
            state = self.model.state_dict()
            floats = [k for k, v in state.items() if v.is_floating_point()]
            torch._foreach_lerp_(
                [self.ema[k] for k in floats],
                [state[k].float() for k in floats],
                1 - self.cfg.ema_decay,
            )
            for k, v in state.items():
                if not v.is_floating_point():
                    self.ema[k].copy_(v)

    def log(self, record: dict) -> None:
        if not distributed.is_main():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board is not None:
            self.board.record(record)

    def fit(self, stop_at: int | None = None) -> None:
        """Train to ``cfg.steps`` (or pause after ``stop_at`` steps, schedule unchanged).

        The loop never waits on the device: losses and gradient norms stay there until a
        log or checkpoint step reads them (and fails on a non-finite loss before any
        checkpoint holds its weights)."""
        cfg = self.cfg
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        if self.eval_fn is not None and cfg.parallel == "fsdp":
            raise ConfigError("an evaluating recipe cannot shard with FSDP: use parallel='ddp'")
        self.model.train()
        if cfg.tensorboard and distributed.is_main():
            self.board = Board(self.out)
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not distributed.is_main(),
        )
        window: list[dict[str, Any]] = []
        t_window = time.perf_counter()
        try:
            while self.step < end:
                batch = distributed.shard(self.batch_fn(self.step))  # this rank's share
                batch = to_device(batch, self.device)
                optimizers = [self.optimizer]
                if self.auxiliary is not None:
                    optimizers += self.auxiliary.optimizers.values()
                for group in (g for opt in optimizers for g in opt.param_groups):
                    group["lr"] = lr_at(cfg, self.step)
                with autocast(self.device, cfg.bf16):
                    loss, metrics = self.loss_fn(self.net, batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                self.optimizer.step()
                if self.ema is not None:
                    self._update_ema()
                self.step += 1
                grad_norm = distributed.local(grad_norm)  # (FSDP: a replicated DTensor)
                metrics = {"loss": loss.detach(), "grad_norm": grad_norm, **metrics}
                if self.flops_per_step is not None:
                    metrics["flops"] = float(self.flops_per_step(batch))
                if self.tokens_per_step is not None:
                    metrics["tokens"] = float(self.tokens_per_step(batch))
                window.append(metrics)
                bar.update(1)
                checkpoint = self.step % cfg.checkpoint_every == 0 or self.step == end
                if self.step % cfg.log_every == 0 or checkpoint:
                    loss_now = self._log_window(window, time.perf_counter() - t_window)
                    bar.set_postfix(loss=f"{loss_now:.4f}")
                    window, t_window = [], time.perf_counter()
                self._evaluate(bar, final=self.step == end)
                if checkpoint:
                    self.save_checkpoint()
        finally:
            bar.close()
            if self.board is not None:
                self.board.close()

    def _evaluate(self, bar, final: bool) -> None:
        """``eval_fn`` (rank 0) and ``sample_fn`` (every rank under FSDP, whose forward is
        collective; else rank 0) at their steps."""
        cfg, main = self.cfg, distributed.is_main()
        due = lambda every: every > 0 and (self.step % every == 0 or final)  # noqa: E731
        evaluate = main and self.eval_fn is not None and due(cfg.eval_every)
        sample = (main or cfg.parallel == "fsdp") and self.sample_fn is not None
        sample = sample and due(cfg.sample_every)
        if not (evaluate or sample):
            return
        self.model.eval()
        with torch.no_grad():
            if evaluate:
                scores = self.eval_fn(self.model)
                self.log({"step": self.step, "eval": scores})
                bar.write(
                    f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
                )
            if sample:
                videos = self.sample_fn(self.model)
                if self.board is not None:
                    for name, frames in videos.items():
                        self.board.video(name, frames, self.step)
        self.model.train()

    def _log_window(self, window: list[dict[str, Any]], seconds: float) -> float:
        """Log the mean metrics of the steps since the last log (every rank calls it: the
        loss is averaged over ranks); returns the loss. A non-finite loss stops the run."""
        keys = window[0].keys()
        losses = distributed.mean_over_ranks(torch.stack([m["loss"].float() for m in window]))
        loss = float(losses.mean())
        if not math.isfinite(loss):
            first = self.step - len(window)
            raise FloatingPointError(
                f"loss is {loss} in steps {first}..{self.step - 1}; lower the lr or check the data"
            )
        record: dict[str, Any] = {"step": self.step, "lr": lr_at(self.cfg, self.step - 1)}
        for k in keys:
            if k not in ("flops", "tokens"):
                record[k] = sum(float(m[k]) for m in window) / len(window)
        record["loss"] = loss
        record["s_per_step"] = seconds / len(window)
        if "flops" in keys:  # model FLOPs of this process's share of a step
            record["flops_per_step"] = sum(m["flops"] for m in window) / len(window)
        if "tokens" in keys:  # every process trains on an equal share
            tokens = sum(m["tokens"] for m in window) * distributed.world()
            record["tokens_per_s"] = tokens / seconds
        if "flops" in keys and self.peak_flops:
            achieved = sum(m["flops"] for m in window) / seconds
            record["mfu"] = achieved / self.peak_flops
        if distributed.world() > 1:
            record["processes"] = distributed.world()
        self.log(record)
        return loss


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state by parameter name -> ({'<name>/<state>': tensor}, JSON-able groups)."""
    tensors = {}
    for param, st in sd["state"].items():
        for name, value in st.items():
            tensors[f"{param}/{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], state: dict) -> dict:
    opt: dict[str, dict[str, torch.Tensor]] = {}
    if any("/" not in key for key in tensors):
        raise CheckpointError(
            "this checkpoint's optimizer state is from an older tinysora (by parameter "
            "index); start a new run, or export its weights and train with --init"
        )
    for key, value in tensors.items():
        param, name = key.rsplit("/", 1)
        opt.setdefault(param, {})[name] = value
    return {"state": opt, "param_groups": state["optimizer"]["param_groups"]}
