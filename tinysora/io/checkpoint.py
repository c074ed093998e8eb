"""Weights on disk: ``<dir>/config.json`` + ``<dir>/model.safetensors`` (never pickle).

``save_pretrained(model, config, dir)`` writes a component directory atomically;
``load_pretrained(DiT, dir)`` builds the model from its config and loads the weights
with ``load_into``, which checks that every key is present and every shape matches,
so nothing is silently left at random init. Training checkpoints (model + optimizer
+ trainer state) live in ``tinysora.train.trainer``; they use the same safetensors
files.

Which model directory loads (:func:`resolve_model_dir`), first match wins:

1. the one given (``--model X``, ``from_pretrained(X)``): an existing directory, else
   the name of a bundled model (``default``: the bundled weights themselves; each
   sub-directory of them with a ``pipeline.json`` is a model of that name);
2. the ``TINYSORA_MODEL`` environment variable (a directory or a name);
3. the bundled weights: the package's own copy, ``tinysora/weights/`` in an installed
   wheel, else ``weights/`` of the source checkout the package runs from.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tinysora.config import Config
from tinysora.errors import UserError
from tinysora.io.atomic import atomic_dir, atomic_file, atomic_write_text

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PIPELINE_NAME = "pipeline.json"  # a text-to-video model directory's sampling defaults
MODEL_ENV = "TINYSORA_MODEL"
DEFAULT_MODEL = "default"  # the bundled weights' own name
_PACKAGE = Path(__file__).resolve().parents[1]
BUNDLED_DIRS = (_PACKAGE / "weights", _PACKAGE.parent / "weights")  # wheel, source checkout


class CheckpointError(UserError, RuntimeError):
    """Missing, corrupt or mismatched weights; the message names the file and the fix."""


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: '{path}'")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read weights '{path}': {e}") from None


def save_pretrained(
    model: nn.Module, config: Config, directory: str | os.PathLike, dtype: torch.dtype | None = None
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (cast to ``dtype`` if given) into a fresh
    directory that replaces ``directory`` in one rename."""
    state = model.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with atomic_dir(directory) as tmp:
        save_tensors(state, tmp / WEIGHTS_NAME)
        atomic_write_text(tmp / CONFIG_NAME, config.to_json())
    return Path(directory)


def load_config(config_cls: type[Config], directory: str | os.PathLike) -> Config:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no {CONFIG_NAME} in '{directory}': expected a model directory with "
            f"{CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    return config_cls.load(path)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Copy ``state`` into ``model``: every key must exist on both sides with equal shapes."""
    own = model.state_dict()
    check_state(own, state, source)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def check_state(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str) -> None:
    """Fail with one line unless ``state`` has exactly the keys and shapes of ``own``."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} do not match the model: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"{source}: '{key}' has shape {tuple(value.shape)}, "
                f"the model expects {tuple(own[key].shape)}"
            )


def load_pretrained(model_cls: type[nn.Module], directory: str | os.PathLike) -> nn.Module:
    """``model_cls(config)`` with the weights of a component directory, fp32, eval mode.
    ``model_cls.config_class`` names the config dataclass of ``config.json``."""
    model = model_cls(load_config(model_cls.config_class, directory))
    load_into(model, load_tensors(Path(directory) / WEIGHTS_NAME), str(directory))
    return model.eval()


def bundled_models() -> dict[str, Path]:
    """The bundled models by name: ``default`` (the bundled weights) first, then each
    sub-directory of it holding a ``pipeline.json``; empty without bundled weights."""
    for root in BUNDLED_DIRS:
        if (root / "dit" / CONFIG_NAME).is_file():
            named = sorted(p.parent for p in root.glob(f"*/{PIPELINE_NAME}"))
            return {DEFAULT_MODEL: root, **{p.name: p for p in named}}
    return {}


def resolve_model_dir(directory: str | os.PathLike | None = None, component: str = "") -> Path:
    """The model directory to load (see the module doc for the order): a directory given
    is returned as it is; otherwise the ``component`` sub-directory (``"vae"``, ``"dit"``)
    of the named, configured or bundled model."""
    if directory:
        if Path(directory).exists():
            return Path(directory)
        models = bundled_models()
        if str(directory) in models:
            return models[str(directory)] / component
        known = ", ".join(models) or "none, no bundled weights found"
        raise CheckpointError(
            f"no model '{os.fspath(directory)}': not a directory, nor a bundled model's name "
            f"(known: {known})"
        )
    if os.environ.get(MODEL_ENV):
        return resolve_model_dir(os.environ[MODEL_ENV]) / component
    models = bundled_models()
    if models:
        return models[DEFAULT_MODEL] / component
    raise CheckpointError(
        f"no bundled model found (looked in {', '.join(map(str, BUNDLED_DIRS))}); "
        f"pass --model DIR or set {MODEL_ENV}"
    )


def fingerprint(directory: str | os.PathLike) -> str:
    """A short hash of every file in a model directory (names and bytes): what a cache
    records to know which VAE or text encoder made it."""
    root = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
