"""Many processes under torchrun: DDP over ``torch.distributed`` (gloo on CPU, nccl on CUDA).

    torchrun --nproc_per_node 2 -m tinysora train dit --config RECIPE --out RUN

torchrun sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR``; without them
a run is one process and nothing here does anything. Under torchrun:

* every rank draws the same global batch of a step (``batch_size`` clips, deterministic
  in the step) and trains on its own equal share (:func:`shard`), so N processes x
  batch B/N follow 1 process x batch B: DDP averages the gradients of the shares;
* rank 0 alone writes the latent cache, checkpoints, logs and the exported model;
  every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tinysora.config import ConfigError


def launched() -> bool:
    """True in a process started by torchrun (with more than one process in all)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup() -> None:
    """Join the process group torchrun describes (once); gloo on CPU."""
    if launched() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class _Methods(nn.Module):
    """What DDP wraps: its forward runs any ``forward*`` method of the model by name, so
    losses that call ``model.forward_tokens`` get DDP's gradient averaging too."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, method: str, *args, **kwargs):
        return getattr(self.model, method)(*args, **kwargs)


class DataParallel:
    """The model for a loss function under torchrun: ``m(...)`` and ``m.forward_*(...)``
    run through ``DistributedDataParallel``; other attributes are the model's."""

    def __init__(self, model: nn.Module):
        self.module = model
        self.ddp = nn.parallel.DistributedDataParallel(_Methods(model))

    def __call__(self, *args, **kwargs):
        return self.ddp("forward", *args, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("forward"):
            return lambda *args, **kwargs: self.ddp(name, *args, **kwargs)
        return getattr(self.module, name)


def wrap(model: nn.Module):
    """The model for the loss: :class:`DataParallel` under torchrun, else the model."""
    return DataParallel(model) if dist.is_initialized() else model


def shard(batch: Any) -> Any:
    """This rank's equal share of a batch: every tensor split along dim 0 (tuples / lists
    of tensors recursively; other values as they are)."""
    if world() == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        n = batch.shape[0]
        if n % world():
            raise ConfigError(
                f"batch_size {n} does not split over {world()} processes; make it a multiple"
            )
        share = n // world()
        return batch[rank() * share : (rank() + 1) * share]
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard(b) for b in batch)
    if batch is None or isinstance(batch, (int, float, str, bool)):
        return batch
    raise ConfigError(f"cannot split a {type(batch).__name__} batch over processes yet")


def mean_over_ranks(value: float) -> float:
    """The mean of a per-rank number (a loss) over all ranks."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
