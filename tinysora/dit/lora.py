"""LoRA adapters on the DiT, in peft's format (what users load elsewhere).

    model = add_lora(dit, rank=8)          # adapters on attention + MLP Linears, base frozen
    save_lora(model, "adapter/")          # adapter_config.json + adapter_model.safetensors
    load_lora(dit, "adapter/", scale=0.8) # into a loaded DiT, in place; returns it
    merged = merge_lora(dit)              # adapters folded into the weights; plain DiT again

peft injects its LoRA layers into the DiT's own module tree, so every method of the
model (``forward``, ``forward_tokens``) runs with the adapters and ``DiT`` stays the
class the pipeline and trainer use. Adapters go on every block's self- / temporal /
cross-attention projections (``q``, ``kv``, ``out``) and MLP Linears (``fc1``, ``fc2``);
the q / k norms, timestep embedder, modulation, patch embedding and output layer stay
frozen and adapter-free.
"""

from __future__ import annotations

import os
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from tinysora.dit.model import DiT
from tinysora.errors import UserError

# module names (regex over the full name) that get adapters
TARGETS = r"blocks\.\d+\.((attn|attn_t|cross)\.(q|kv|out)|mlp\.fc[12])"


class LoraError(UserError, ValueError):
    """An adapter that does not fit the model (the message names both)."""


def add_lora(dit: DiT, rank: int = 8, alpha: float | None = None) -> PeftModel:
    """Fresh adapters (B = 0: the model is unchanged until trained) on ``dit``'s Linears;
    every other parameter is frozen. ``alpha`` defaults to ``rank`` (scaling 1)."""
    if rank < 1:
        raise LoraError(f"the LoRA rank must be >= 1, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=TARGETS, lora_dropout=0.0)
    return get_peft_model(dit, config)


def save_lora(model: PeftModel, directory: str | os.PathLike) -> Path:
    model.save_pretrained(str(directory))
    return Path(directory)


def load_lora(dit: DiT, directory: str | os.PathLike, scale: float = 1.0) -> DiT:
    """Put the adapter of ``directory`` into ``dit`` (in place), its update times ``scale``."""
    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        raise LoraError(
            f"'{directory}' is not a LoRA adapter (no adapter_config.json); make one with "
            "`tinysora train lora`"
        )
    try:
        model = PeftModel.from_pretrained(dit, str(directory))
    except (ValueError, RuntimeError, KeyError) as e:
        raise LoraError(f"the adapter '{directory}' does not fit this model: {e}") from None
    for layer in model.modules():
        if isinstance(layer, LoraLayer):
            for name in layer.scaling:
                layer.scaling[name] *= scale
    return dit.eval()


def merge_lora(dit: DiT) -> DiT:
    """``dit`` with its adapters folded into the base weights and removed."""
    for name, module in list(dit.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(dit.get_submodule(parent) if parent else dit, child, module.get_base_layer())
    return dit
