"""Tests for tinysora.io.checkpoint (safetensors component directories) and load_pretrained."""

from __future__ import annotations

import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

from tinysora.io import checkpoint
from tinysora.io.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_config,
    load_into,
    load_pretrained,
    load_tensors,
    resolve_model_dir,
    save_pretrained,
    save_tensors,
)
from tinysora.vae.model import VAEConfig, VideoVAE

TINY = dict(latent_channels=4, channels=(8, 8, 16), encoder_blocks=1, decoder_blocks=1)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vae(seed: int = 0, **overrides) -> VideoVAE:
    torch.manual_seed(seed)
    return VideoVAE(VAEConfig(**{**TINY, **overrides}))


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ----------------------------------------------------------------------------- save / load


def test_save_pretrained_writes_config_and_safetensors_only(tmp_path):
    vae = tiny_vae(scaling_factor=1.7, shift_factor=0.2)
    path = save_pretrained(vae, vae.config, tmp_path / "vae")
    assert path == tmp_path / "vae"
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    # no pickle anywhere (torch.save files start with a zip or pickle header)
    head = (path / WEIGHTS_NAME).read_bytes()[:8]
    assert not head.startswith(b"PK") and not head.startswith(b"\x80")
    cfg = json.loads((path / CONFIG_NAME).read_text())
    assert cfg["scaling_factor"] == 1.7 and cfg["shift_factor"] == 0.2
    assert list(tmp_path.iterdir()) == [path]


def test_round_trip_fp32_is_exact(tmp_path):
    vae = tiny_vae(seed=1)
    save_pretrained(vae, vae.config, tmp_path / "vae")
    cfg = load_config(VAEConfig, tmp_path / "vae")
    assert cfg == vae.config
    state = load_tensors(tmp_path / "vae" / WEIGHTS_NAME)
    assert all(v.dtype == torch.float32 for v in state.values())
    other = VideoVAE(cfg)
    load_into(other, state)
    assert_same_state(vae, other)


def test_bf16_saving_halves_the_file_and_loads_back_close(tmp_path):
    vae = tiny_vae(seed=2)
    save_pretrained(vae, vae.config, tmp_path / "fp32")
    save_pretrained(vae, vae.config, tmp_path / "bf16", dtype=torch.bfloat16)
    full = (tmp_path / "fp32" / WEIGHTS_NAME).stat().st_size
    half = (tmp_path / "bf16" / WEIGHTS_NAME).stat().st_size
    assert 0.45 < half / full < 0.6, (half, full)
    state = load_tensors(tmp_path / "bf16" / WEIGHTS_NAME)
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    other = VideoVAE(vae.config)
    load_into(other, state)
    for (key, a), b in zip(vae.state_dict().items(), other.state_dict().values(), strict=True):
        assert b.dtype == torch.float32, key
        assert torch.allclose(a, b, rtol=1e-2, atol=1e-6), key


def test_saving_twice_replaces_the_directory_cleanly(tmp_path):
    parent = tmp_path / "models"
    first, second = tiny_vae(seed=3), tiny_vae(seed=4, latent_channels=8)
    save_pretrained(first, first.config, parent / "vae")
    (parent / "vae" / "stale.txt").write_text("from an older save")
    save_pretrained(second, second.config, parent / "vae")
    assert [p.name for p in parent.iterdir()] == ["vae"]  # no .vae.old / temp dirs
    assert sorted(p.name for p in (parent / "vae").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert load_config(VAEConfig, parent / "vae").latent_channels == 8
    loaded = VideoVAE(second.config)
    load_into(loaded, load_tensors(parent / "vae" / WEIGHTS_NAME))
    assert_same_state(second, loaded)


def test_save_tensors_is_atomic_and_leaves_no_temp_files(tmp_path):
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    path = tmp_path / "sub" / "t.safetensors"
    save_tensors(tensors, path)
    save_tensors({"a": torch.zeros(1)}, path)  # overwrite
    assert [p.name for p in path.parent.iterdir()] == ["t.safetensors"]
    assert list(load_tensors(path)) == ["a"]


def test_saved_files_follow_the_umask(tmp_path):
    vae = tiny_vae()
    with umask(0o022):
        path = save_pretrained(vae, vae.config, tmp_path / "vae")
        save_tensors({"x": torch.ones(2)}, tmp_path / "x.safetensors")
    assert mode(path / CONFIG_NAME) == 0o644
    assert mode(tmp_path / "x.safetensors") == 0o644
    assert mode(path / WEIGHTS_NAME) == 0o644


def test_saved_directory_is_not_private_under_usual_umask(tmp_path):
    vae = tiny_vae()
    with umask(0o022):
        path = save_pretrained(vae, vae.config, tmp_path / "vae")
    assert mode(path) == 0o755  # mkdtemp's 0700 is widened


def test_saved_directory_follows_a_private_umask(tmp_path):
    vae = tiny_vae()
    with umask(0o077):
        path = save_pretrained(vae, vae.config, tmp_path / "vae")
    assert mode(path) == 0o700


# ----------------------------------------------------------------------------- strict loading


class Small(nn.Module):
    def __init__(self, width: int = 3):
        super().__init__()
        self.fc = nn.Linear(2, width)
        self.out = nn.Linear(width, 1)


def test_load_into_missing_key_names_it():
    model = Small()
    state = dict(Small().state_dict())
    del state["out.bias"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"missing.*out\.bias"):
        load_into(model, state)
    for key, value in model.state_dict().items():  # nothing half-loaded
        assert torch.equal(value, before[key])


def test_load_into_unexpected_key_names_it():
    state = dict(Small().state_dict())
    state["extra.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"unexpected.*extra\.weight"):
        load_into(Small(), state, "my weights")


def test_load_into_wrong_shape_names_key_and_shapes():
    with pytest.raises(CheckpointError) as info:
        load_into(Small(width=3), Small(width=4).state_dict(), "ckpt")
    message = str(info.value)
    assert "fc.weight" in message or "fc.bias" in message or "out.weight" in message
    assert "ckpt" in message


def test_load_into_wrong_vae_config(tmp_path):
    save_pretrained(tiny_vae(), VAEConfig(**TINY), tmp_path / "vae")
    bigger = VideoVAE(VAEConfig(**{**TINY, "latent_channels": 8}))
    with pytest.raises(CheckpointError, match="shape"):
        load_into(bigger, load_tensors(tmp_path / "vae" / WEIGHTS_NAME))


def test_load_tensors_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_tensors(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError):
        load_tensors(tmp_path)  # a directory


@pytest.mark.parametrize("kind", ["random", "empty", "truncated", "zeros"])
def test_load_tensors_corrupt_file(tmp_path, kind):
    good = tmp_path / "good.safetensors"
    save_tensors({"w": torch.randn(64, 64)}, good)
    data = {
        "random": os.urandom(4096),
        "empty": b"",
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "zeros": bytes(256),
    }[kind]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_tensors(bad)


def test_load_config_missing(tmp_path):
    (tmp_path / "weights_only").mkdir()
    with pytest.raises(CheckpointError, match=CONFIG_NAME):
        load_config(VAEConfig, tmp_path / "weights_only")
    with pytest.raises(CheckpointError):
        load_config(VAEConfig, tmp_path / "does_not_exist")


# ----------------------------------------------------------------------------- load_pretrained


def test_load_vae_returns_equal_eval_model(tmp_path):
    vae = tiny_vae(seed=5, scaling_factor=0.7, shift_factor=0.1)
    save_pretrained(vae, vae.config, tmp_path / "vae")
    loaded = load_pretrained(VideoVAE, tmp_path / "vae")
    assert isinstance(loaded, VideoVAE)
    assert not loaded.training
    assert all(not m.training for m in loaded.modules())
    assert loaded.config == vae.config
    assert_same_state(vae, loaded)
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(x).mean, vae.eval().encode(x).mean)


def test_load_vae_bf16_directory_is_fp32(tmp_path):
    vae = tiny_vae(seed=6)
    save_pretrained(vae, vae.config, tmp_path / "vae", dtype=torch.bfloat16)
    loaded = load_pretrained(VideoVAE, str(tmp_path / "vae"))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_load_vae_errors(tmp_path):
    with pytest.raises(CheckpointError):
        load_pretrained(VideoVAE, tmp_path / "missing")
    vae = tiny_vae()
    save_pretrained(vae, vae.config, tmp_path / "vae")
    (tmp_path / "vae" / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(VideoVAE, tmp_path / "vae")


# ----------------------------------------------------------------------------- named models


@pytest.fixture
def bundled(tmp_path, monkeypatch):
    """Bundled weights with a second named model (``fast/``) beside the default."""
    root = tmp_path / "weights"
    (root / "dit").mkdir(parents=True)
    (root / "dit" / "config.json").write_text("{}")
    (root / "fast").mkdir()
    (root / "fast" / "pipeline.json").write_text("{}")
    (root / "voice").mkdir()  # not a pipeline: no name
    monkeypatch.setattr(checkpoint, "BUNDLED_DIRS", (tmp_path / "absent", root))
    monkeypatch.delenv(checkpoint.MODEL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    return root


def test_the_real_bundled_model_is_named_default():
    assert (
        resolve_model_dir("default")
        == resolve_model_dir()
        == checkpoint.bundled_models()["default"]
    )
    assert resolve_model_dir("default", "vae") == resolve_model_dir(None, "vae")


def test_named_models_resolve_to_bundled_directories(bundled, monkeypatch):
    assert checkpoint.bundled_models() == {"default": bundled, "fast": bundled / "fast"}
    assert resolve_model_dir() == resolve_model_dir("default") == bundled
    assert resolve_model_dir("fast", "vae") == bundled / "fast" / "vae"
    monkeypatch.setenv(checkpoint.MODEL_ENV, "fast")
    assert resolve_model_dir(None, "dit") == bundled / "fast" / "dit"


def test_a_directory_wins_over_a_name(bundled):
    Path("fast").mkdir()
    assert resolve_model_dir("fast", "vae") == Path("fast")


def test_an_unknown_name_lists_the_known_ones(bundled, monkeypatch):
    with pytest.raises(CheckpointError, match=r"no model 'slow'.*\(known: default, fast\)$"):
        resolve_model_dir("slow")
    monkeypatch.setenv(checkpoint.MODEL_ENV, "slow")
    with pytest.raises(CheckpointError, match="no model 'slow'"):
        resolve_model_dir()
    monkeypatch.setattr(checkpoint, "BUNDLED_DIRS", ())
    with pytest.raises(CheckpointError, match="known: none"):
        resolve_model_dir("default")
