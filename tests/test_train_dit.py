"""DiT training recipe end to end (tiny models, real files), captions and the adherence judge."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_recipe

from tinysora.cli import main
from tinysora.config import ConfigError
from tinysora.device import compute_dtype
from tinysora.dit.flops import attention_flops, dit_flops_per_sample
from tinysora.dit.model import DiT, preset
from tinysora.eval.adherence import group_prompts
from tinysora.eval.metrics import wilson
from tinysora.io.checkpoint import load_tensors
from tinysora.perf import cpu_model, peak_flops
from tinysora.pipeline import TextToVideoPipeline
from tinysora.text.encoder import TextEncoder
from tinysora.train.dit import train_dit
from tinysora.train.recipe import DiTRecipe
from tinysora.train.steps import _kept_tokens, packed_steps
from tinysora.train.validation import val_loss_fn
from tinysora.worlds.captions import paraphrase, vocabulary
from tinysora.worlds.detect import DetectedObject, Detection, judge
from tinysora.worlds.shapes import HELD_OUT_PAIRS, SplitMix64, parse_caption, sample_scene


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("dit")
    recipe = tiny_recipe(
        root,
        top="cache_clips = 12\nbatch_size = 4\nencode_batch = 4\n",
        steps=4,
        log_every=2,
        train="ema_decay = 0.5\n",
    )
    cache_home = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("XDG_CACHE_HOME", str(cache_home))
        out = train_dit(recipe, root / "run")
    # the recipe gives the matmul peak: nothing was timed, nothing cached
    assert list(cache_home.iterdir()) == []
    return root, out


def test_train_dit_writes_a_loadable_pipeline(trained):
    root, model_dir = trained
    log = [json.loads(line) for line in (root / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    assert all(np.isfinite(r["loss"]) and 0 < r["mfu"] < 1 for r in log)
    assert (root / "run" / "latents.safetensors").is_file()
    pipe = TextToVideoPipeline.from_pretrained(model_dir)
    assert pipe.dit.config.in_channels == 4
    frames = pipe("a red ball", num_frames=5, progress=False).frames
    assert frames.shape == (5, 64, 64, 3)
    assert pipe.config.vocabulary == vocabulary()  # the Shapes World's caption words


def test_train_dit_refuses_to_overwrite_and_resumes(trained):
    root, _ = trained
    with pytest.raises(FileExistsError):
        train_dit(root / "recipe.toml", root / "run")
    train_dit(root / "recipe.toml", root / "run", resume=True)  # already at the last step


def test_every_shipped_recipe_loads():
    from tinysora.train.vae import VAERecipe

    configs = Path(__file__).resolve().parents[1] / "configs"
    dit = [DiTRecipe.load(p) for p in sorted(configs.glob("dit_*.toml"))]
    vae = [VAERecipe.load(p) for p in sorted(configs.glob("vae_*.toml"))]
    assert len(dit) >= 8 and len(vae) >= 3
    assert all(r.model.width == 256 and r.model.depth == 8 for r in dit)  # XS/2


def test_model_presets_in_recipes(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[model]\npreset = "S/2"\ndepth = 3\n')
    recipe = DiTRecipe.load(path)
    assert recipe.model == dataclasses.replace(preset("S/2"), depth=3)
    assert "preset" not in recipe.model.to_dict()  # saved expanded, explicit
    path.write_text('[model]\npreset = "XL/9"\n')
    with pytest.raises(ConfigError, match="unknown DiT preset 'XL/9'; use one of tiny"):
        DiTRecipe.load(path)


def test_cached_matmul_peak(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    threads = torch.get_num_threads()
    key = f"{cpu_model()} | torch {torch.__version__} | {threads} threads | {compute_dtype()}"
    cache = tmp_path / "tinysora" / "matmul_peak.json"
    cache.parent.mkdir()
    cache.write_text(json.dumps({key: 1.25e12, "another machine": 9e12}))
    assert peak_flops() == 1.25e12  # read back, not measured


def test_flops_formula_scales():
    cfg = preset("XS/2")
    one = dit_flops_per_sample(cfg, (5, 4, 4), 32)
    assert dit_flops_per_sample(cfg, (10, 4, 4), 32) > 2 * one  # attention is superlinear
    fact = dataclasses.replace(cfg, attention="factorized")
    # factorized attention grows linearly in frames at a fixed frame size
    a, b = (attention_flops(fact, (f, 4, 4), 0) for f in (5, 10))
    assert b == pytest.approx(2 * a * (16 + 10) / (16 + 5))
    params = sum(p.numel() for p in DiT(cfg).parameters())
    assert 0.5 < one / (6 * params * 80) < 2.0  # close to the 6 N D rule of thumb


def test_paraphrase_keeps_the_judged_words_or_their_synonyms():
    scene = parse_caption("a large red circle moving left on a navy background")
    texts = {paraphrase(scene, SplitMix64(i)) for i in range(200)}
    assert scene.caption in texts or len(texts) > 20
    assert any("ball" in t for t in texts) and any("crimson" in t for t in texts)
    assert any("navy" not in t for t in texts)
    full = paraphrase(scene, SplitMix64(1), 1.0, 1.0, 1.0, 1.0)
    assert "large" not in full and "navy" not in full and not full.startswith("a ")


def test_group_prompts():
    held = group_prompts("held_out", 5)
    assert all((s.objects[0].color, s.objects[0].shape) in HELD_OUT_PAIRS for s, _ in held)
    assert all(len(s.objects) == 2 for s, _ in group_prompts("two", 5))
    assert [p for _, p in group_prompts("single", 3)] == [
        s.caption for s, _ in group_prompts("single", 3)
    ]


def _found(color, shape, motion):
    return DetectedObject(color, shape, motion, "small", np.zeros((1, 2)), np.ones(1))


def test_judge():
    scene = sample_scene(2_000_001)  # two objects
    a, b = scene.objects
    right = Detection(
        "gray", [_found(a.color, a.shape, a.motion), _found(b.color, b.shape, b.motion)]
    )
    assert judge(scene, right)["all_right"]
    wrong_shape = Detection(
        "gray",
        [
            _found(a.color, "circle" if a.shape != "circle" else "square", a.motion),
            _found(b.color, b.shape, b.motion),
        ],
    )
    result = judge(scene, wrong_shape)
    assert not result["all_right"] and result["objects"][0]["color"]
    extra = Detection(
        "gray",
        right.objects
        + [_found("pink" if "pink" not in (a.color, b.color) else "red", "circle", None)],
    )
    assert judge(scene, extra)["extra"] == 1 and not judge(scene, extra)["all_right"]
    lo, hi = wilson(90, 100)
    assert lo < 0.9 < hi and hi - lo < 0.15


def test_export_a_checkpoint_of_a_run_from_the_cli(trained, tmp_path, capsys):
    root, final = trained
    assert main(["export", str(root / "run"), "-o", str(tmp_path / "m2"), "--step", "2"]) == 0
    assert capsys.readouterr().out.strip().endswith("m2")
    early = TextToVideoPipeline.from_pretrained(tmp_path / "m2").dit.state_dict()
    late = TextToVideoPipeline.from_pretrained(final).dit.state_dict()
    assert any(not torch.equal(early[k], late[k]) for k in late)  # step 2 is not step 4
    assert main(["export", str(root / "run"), "-o", str(tmp_path / "m4")]) == 0  # latest
    latest = TextToVideoPipeline.from_pretrained(tmp_path / "m4").dit.state_dict()
    assert all(torch.equal(latest[k], late[k]) for k in late)
    assert main(["export", str(root / "run"), "-o", str(tmp_path / "x"), "--step", "3"]) == 2
    assert "no checkpoint 'step_00000003'" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "y")]) == 2
    assert "not a DiT run directory" in capsys.readouterr().err


def test_eval_adherence_cli_writes_a_report(trained, tmp_path, capsys):
    _, model_dir = trained
    out = tmp_path / "adherence.json"
    argv = ["eval", "adherence", "--model", str(model_dir), "--n", "2", "--frames", "5"]
    assert main([*argv, "--groups", "single", "two", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"single", "two"}
    assert report["two"]["prompts"] == 2 and len(report["two"]["rows"][0]["objects"]) == 2
    assert 0 <= report["single"]["all_right"] <= 1
    assert "all right" in capsys.readouterr().out
    argv = [*argv, "--groups", "single", "--guidance", "1.5", "--sampler", "heun"]
    assert main(argv) == 0
    assert main([*argv[:-1], "ddim"]) == 2
    assert "invalid choice: 'ddim'" in capsys.readouterr().err


def test_packed_training_on_a_mixture_of_sizes(tmp_path, one_thread):
    recipe = tiny_recipe(
        tmp_path,
        "[packing]\nenabled = true\ntoken_budget = 40\nrows = 2\nclips_per_size = 2\n"
        "[packing.mixture]\nsides = [32, 48]\nframes = [1, 9]\nframe_weights = [0.5, 0.5]\n",
        top="encode_batch = 2\n",
    )
    model_dir = train_dit(recipe, tmp_path / "run")
    cache = load_tensors(tmp_path / "run" / "latents.safetensors")
    assert cache["latents/9x48x32"].shape == (2, 4, 3, 6, 4)  # every size of the mixture
    assert len({int(s) for k, v in cache.items() if k.startswith("seeds/") for s in v}) == 16
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(0.9 <= r["pack_efficiency"] <= 1 and np.isfinite(r["loss"]) for r in log)
    batch_fn = packed_steps(DiTRecipe.load(recipe), cache, TextEncoder(max_length=8)).batch_fn
    for step in range(20):  # each planned row stays one row (no re-packing spill-over)
        packed = batch_fn(step).packed
        assert packed.tokens.shape[:2] == (2, 40) and packed.efficiency >= 0.9
    assert all(0 < r["mfu"] < 1 for r in log)
    pipe = TextToVideoPipeline.from_pretrained(model_dir)
    assert pipe("a red ball", num_frames=9, height=48, width=32, progress=False).frames.shape == (
        9,
        48,
        32,
        3,
    )


def test_token_dropping_keeps_images_whole_and_drops_up_to_the_fraction():
    g = torch.Generator().manual_seed(0)
    assert torch.equal(_kept_tokens((1, 4, 4), 0.5, g), torch.arange(16))
    assert torch.equal(_kept_tokens((5, 4, 4), 0.0, g), torch.arange(80))
    sizes = [len(_kept_tokens((5, 4, 4), 0.5, g)) for _ in range(200)]
    assert 40 <= min(sizes) < 50 and max(sizes) > 75  # drop fraction ~ U(0, 0.5)
    kept = _kept_tokens((5, 4, 4), 0.5, g)
    assert torch.equal(kept, kept.sort().values) and len(set(kept.tolist())) == len(kept)


def test_validation_loss_is_fixed_per_model_and_logged(tmp_path, one_thread):
    top = "cache_clips = 4\nbatch_size = 2\nencode_batch = 4\nval_clips = 3\nframes = 9\n"
    recipe_path = tiny_recipe(tmp_path, top=top, steps=4, train="eval_every = 2\n")
    train_dit(recipe_path, tmp_path / "run")
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0 < r["eval"]["val_loss"] < 10 for r in evals)
    recipe = DiTRecipe.load(tmp_path / "run" / "recipe.json")
    fn = val_loss_fn(recipe, torch.device("cpu"))
    model = TextToVideoPipeline.from_pretrained(tmp_path / "run" / "model").dit
    assert fn(model) == fn(model)  # the same inputs every time
    other = DiT(recipe.model).eval()
    assert fn(other) != fn(model)
