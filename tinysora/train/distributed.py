"""Many processes under torchrun: DDP or FSDP2 over ``torch.distributed`` (gloo on CPU,
nccl on CUDA).

    torchrun --nproc_per_node 2 -m tinysora train dit --config RECIPE --out RUN
    torchrun --nnodes 2 --node_rank R --nproc_per_node 1 \
        --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m tinysora train dit ...

torchrun sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR``; without them
a run is one process and nothing here does anything. Under torchrun:

* every rank draws the same global batch of a step (``batch_size`` clips, deterministic
  in the step) and trains on its own equal share (:func:`shard`), so N processes x
  batch B/N follow 1 process x batch B: DDP averages the gradients of the shares;
* rank 0 alone writes the latent cache, checkpoints, logs and the exported model;
  every rank resumes from the same checkpoint.

``[train] parallel`` picks how the model is spread: ``"ddp"`` (default) keeps a whole copy
per process and averages gradients; ``"fsdp"`` (``torch.distributed.fsdp.fully_shard``,
FSDP2) shards every DiT block and the rest of the model over the processes, for models
that do not fit one device. Either way a checkpoint holds the whole model (gathered,
written by rank 0) in the one-process format, so runs resume and export alike.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tinysora.config import ConfigError

PARALLEL = ("ddp", "fsdp")


def launched() -> bool:
    """True in a process started by torchrun (with more than one process in all)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device | None = None) -> None:
    """Join the process group torchrun describes (once): nccl when training on CUDA (each
    process on its ``cuda:LOCAL_RANK``), else gloo."""
    if launched() and not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")


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
        device = next(model.parameters()).device
        ids = [device] if device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(_Methods(model), device_ids=ids)

    def __call__(self, *args, **kwargs):
        return self.ddp("forward", *args, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("forward"):
            return lambda *args, **kwargs: self.ddp(name, *args, **kwargs)
        return getattr(self.module, name)


def wrap(model: nn.Module, parallel: str = "ddp"):
    """The model for the loss: under torchrun :class:`DataParallel`, or with ``"fsdp"`` the
    model itself, sharded in place (:func:`shard_model`); in one process the model."""
    if parallel not in PARALLEL:
        raise ConfigError(f"[train] parallel = {parallel!r}; use one of {PARALLEL}")
    if not dist.is_initialized():
        return model
    if parallel == "fsdp":
        shard_model(model)
        return model
    return DataParallel(model)


def shard_model(model: nn.Module) -> None:
    """FSDP2: each of ``model.blocks`` and then the rest of the model become their own
    all-gather unit (parameters turn into DTensors holding this rank's shard); the
    model's ``forward_*`` methods gather like ``forward``."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ConfigError(
            f"parallel = 'fsdp' shards a model block by block; {type(model).__name__} has no "
            "blocks: use parallel = 'ddp'"
        )
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    for name in dir(type(model)):
        if name.startswith("forward_"):
            register_fsdp_forward_method(model, name)


# torch.distributed.checkpoint and .tensor are imported where used: ~2 s per process


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on the CPU (under FSDP: gathered, a collective call
    every rank makes; rank 0 gets the tensors)."""
    if not _sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint import state_dict as dcp

    options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dcp.get_model_state_dict(model, options=options)


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict (every rank read the same file) into a possibly sharded model."""
    from torch.distributed.checkpoint import state_dict as dcp

    dcp.set_model_state_dict(model, state, options=dcp.StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter name (``{"state": {name: {...}},
    "param_groups": [...]}``), whole tensors on the CPU; collective under FSDP."""
    from torch.distributed.checkpoint import state_dict as dcp

    options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dcp.get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint import state_dict as dcp

    options = dcp.StateDictOptions(full_state_dict=True)
    dcp.set_optimizer_state_dict(model, optimizer, state, options=options)
    for group in optimizer.param_groups:  # (it loads them as lists)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])


def full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sharded tensors (DTensor) gathered whole (collective); plain tensors as they are."""
    return {k: local(v) for k, v in tensors.items()}


def like_shards(full: dict[str, torch.Tensor], like: dict[str, torch.Tensor]):
    """Whole tensors cut like ``like`` (this rank's shard where ``like`` holds DTensors)."""
    if not any(_is_dtensor(v) for v in like.values()):
        return {k: v.to(like[k].device) for k, v in full.items()}
    from torch.distributed.tensor import distribute_tensor

    return {
        k: distribute_tensor(v.to(like[k].device), like[k].device_mesh, like[k].placements)
        if _is_dtensor(like[k])
        else v.to(like[k].device)
        for k, v in full.items()
    }


def local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (a shard, or FSDP's replicated gradient norm) as a whole plain tensor
    (collective for a shard); other tensors as they are."""
    return t.full_tensor() if _is_dtensor(t) else t


def _is_dtensor(t) -> bool:
    """Whether ``t`` is a DTensor (only under torchrun is torch.distributed.tensor loaded)."""
    if not dist.is_initialized():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _sharded(model: nn.Module) -> bool:
    return any(_is_dtensor(p) for p in model.parameters())


def shard(batch: Any) -> Any:
    """This rank's equal share of a batch: every tensor split along dim 0 (tuples / lists
    of tensors recursively; an object with a ``shard(rank, world)`` method splits itself;
    other values as they are)."""
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
    if hasattr(batch, "shard"):  # a batch that knows how to split (e.g. packed rows)
        return batch.shard(rank(), world())
    if batch is None or isinstance(batch, (int, float, str, bool)):
        return batch
    raise ConfigError(f"cannot split a {type(batch).__name__} batch over processes yet")


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of per-rank numbers (losses) over all ranks, element-wise."""
    if not dist.is_initialized():
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / world()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
