"""LoRA on the DiT with peft: train adapters from a cache, load them, scale them, merge them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from numerics import assert_close_fp32
from safetensors.torch import load_file
from test_cache import make_folder
from tiny import save_tiny_model

from tinysora.cli import main
from tinysora.data.cache import LatentCache, prepare
from tinysora.data.folder import FolderConfig
from tinysora.dit.lora import LoraError, load_lora, merge_lora
from tinysora.dit.model import DiT
from tinysora.io.checkpoint import load_pretrained
from tinysora.pipeline import TextToVideoPipeline
from tinysora.text.vocabulary import ADAPTER_VOCABULARY, from_captions
from tinysora.train.lora import train_lora

PROMPT = "a small red circle moving left on a black background"
# The adapter moves the test's latents by 2.1% of their norm (measured); "material" is 1%.
MATERIAL = 0.01
# The exported model generates within 3.8% (bf16 compute; 1.7% in fp32) of the adapter's
# effect from the adapter's latents, measured: the bf16 rounding of the merged weights.
# An export that merged nothing is 100% away.
EXPORT_SHARE = 0.1
RECIPE = """batch_size = 2
[train]
steps = 4
lr = 1e-2
warmup_steps = 1
checkpoint_every = 4
log_every = 2
ema_decay = 0.5
peak_tflops = 1.0
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lora")
    model = save_tiny_model(root / "base", steps=2)
    data = make_folder(root / "clips", 4)
    prepare(data, root / "cache", FolderConfig(frames=9), vae_dir=model / "vae", progress=False)
    (root / "lora.toml").write_text(RECIPE)
    adapter = train_lora(model, root / "cache", root / "run", rank=4, config=root / "lora.toml")
    return root, model, adapter


def latents(pipe, seed=0):
    g = torch.Generator().manual_seed(seed)
    return pipe(PROMPT, num_frames=9, output_type="latent", generator=g, progress=False).frames


def test_adapter_files_and_a_frozen_base(run):
    root, model, adapter = run
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    assert any("cross" in k for k in weights) and any("mlp" in k for k in weights)
    assert max(float(v.abs().max()) for k, v in weights.items() if "lora_B" in k) > 0  # trained
    base = load_pretrained(DiT, model / "dit").state_dict()
    final = load_file(root / "run" / "checkpoints" / "step_00000004" / "model.safetensors")
    for key, value in final.items():  # every base weight is where it started
        plain = key.replace(".base_layer", "")
        if "lora_" not in key:
            assert torch.equal(value, base[plain]), key
    # the words of the adapter's captions go with it (the base saved none)
    words = json.loads((adapter / ADAPTER_VOCABULARY).read_text())
    assert words == from_captions(LatentCache(root / "cache").captions) != {}
    assert TextToVideoPipeline.from_pretrained(model).load_lora(adapter).config.vocabulary == words


def test_load_scale_and_merge(run):
    root, model, adapter = run
    pipe = TextToVideoPipeline.from_pretrained(model)
    base = latents(pipe)
    with_adapter = latents(TextToVideoPipeline.from_pretrained(model).load_lora(adapter))
    off = latents(TextToVideoPipeline.from_pretrained(model).load_lora(adapter, scale=0.0))
    effect = float((with_adapter - base).norm())
    assert effect > MATERIAL * float(base.norm()), "the adapter hardly moves the output"
    assert torch.equal(off, base)  # scale 0: the adapter adds exact zeros
    # merged into the weights (in memory): the same velocities as the adapter
    dit = load_lora(load_pretrained(DiT, model / "dit"), adapter)
    x, t = torch.randn(2, 4, 3, 8, 8), torch.tensor([0.3, 0.9])
    text, mask = pipe.text_encoder([PROMPT, ""])
    with torch.no_grad():
        expected = dit(x, t, text, mask)
        merged = merge_lora(dit)
        assert not any("lora" in k for k in merged.state_dict())
        assert_close_fp32(merged(x, t, text, mask), expected, rtol=1e-4)
    # and as a model directory, from the CLI: the same merge, stored in bf16
    out = root / "merged"
    assert main(["export", str(root / "run"), "--merge-lora", "-o", str(out)]) == 0
    stored = load_file(out / "dit" / "model.safetensors")
    words = json.loads((root / "run" / "adapter" / ADAPTER_VOCABULARY).read_text())
    assert TextToVideoPipeline.from_pretrained(out).config.vocabulary == words
    assert set(stored) == set(pipe.dit.state_dict())
    differ = [k for k, v in merged.state_dict().items() if not torch.equal(stored[k], v.bfloat16())]
    assert not differ, f"the export is not the merged adapter: {differ[:5]}"
    # its generation is the adapter's, up to the bf16 rounding of the merged weights
    exported = latents(TextToVideoPipeline.from_pretrained(out))
    moved = float((exported - with_adapter).norm())
    assert moved < EXPORT_SHARE * effect, f"{moved:.3g} from the adapter's, effect {effect:.3g}"


def test_generate_with_an_adapter_from_the_cli(run, tmp_path, capsys):
    _, model, adapter = run
    args = ["generate", PROMPT, "--model", str(model), "--frames", "5", "--steps", "2"]
    assert main([*args, "--lora", str(adapter), "-o", str(tmp_path / "a.npy")]) == 0
    assert main([*args, "-o", str(tmp_path / "b.npy")]) == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == b.shape == (5, 64, 64, 3) and not np.array_equal(a, b)
    assert main([*args, "--lora", str(tmp_path), "-o", str(tmp_path / "c.npy")]) == 2
    assert "is not a LoRA adapter" in capsys.readouterr().err
    with pytest.raises(LoraError, match="not a LoRA adapter"):
        load_lora(load_pretrained(DiT, model / "dit"), tmp_path)
