"""`tinysora eval all --html`: one static page with every table, plot and sample, from a
tiny random-weight model saved as real files (generation, VAE, detector all real)."""

from __future__ import annotations

import json
import re

import pytest
from tiny import save_tiny_model

from tinysora.cli import main
from tinysora.eval.report import runnable_tasks
from tinysora.eval.tasks import TASKS
from tinysora.io.video import read_video


@pytest.mark.slow  # every eval it gathers runs in make test on its own
def test_eval_all_writes_a_self_contained_page(tmp_path, one_thread, capsys):
    model = save_tiny_model(tmp_path / "model", width=32, depth=1)
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in (1, 2, 3)))
    out = tmp_path / "report"
    argv = ["eval", "all", "--html", str(out), "--model", str(model), "--n", "2"]
    assert main([*argv, "--frames", "5", "--log", str(log)]) == 0
    assert str(out / "index.html") in capsys.readouterr().out

    page = (out / "index.html").read_text()
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"adherence", "dynamics", "vae", "samples", "tasks"}
    # 5-frame clips: every conditioning task but extension (its windows need >= 9 frames)
    assert list(report["tasks"]) == ["image_to_video", "interpolation", "loop", "editing"]
    assert all(report["tasks"][t]["clips"] == 2 for t in report["tasks"])
    assert "<h2>Conditioning tasks</h2>" in page and "psnr_first_db" in page
    strips = [s for s in re.findall(r'src="([^"]+)"', page) if s.startswith("tasks/")]
    assert len(strips) == 2 * len(report["tasks"]) - 1  # the loop is given no frames
    assert set(report["adherence"]) == {"single", "two", "held_out", "paraphrased"}
    for group in report["adherence"]:
        assert f'<td class="l">{group}</td>' in page
        assert report["adherence"][group]["fidelity"]["clips"] == 2  # beside adherence
    vae_quality = report["vae"]["quality"]
    assert vae_quality["64x64x17"]["fidelity_reference"]["stray_fraction_mean"] == 0.0
    assert "fidelity" not in vae_quality["image_64x64"]  # an image has no motion
    assert "area CV bouncing" in page and "stray pixels" in page
    # every image the page shows exists; GIFs are real clips of the asked size
    sources = re.findall(r'src="([^"]+)"', page)
    assert {"adherence.png", "vae.png", "training.png"} <= set(sources)
    assert len([s for s in sources if s.endswith(".gif")]) == 2 * len(report["samples"])
    for src in sources:
        assert (out / src).is_file(), src
    frames, _ = read_video(out / report["samples"][0]["generated"])
    assert frames.shape == (5, 64, 64, 3)
    assert "<script" not in page  # static: opens from disk without a server


def test_conditioning_tasks_that_fit_the_clip_length():
    assert runnable_tasks(1, 129) == []  # images
    assert runnable_tasks(8, 129) == []  # not 1 + 4k
    assert "extension" not in runnable_tasks(5, 129)
    assert runnable_tasks(17, 129) == list(TASKS)
    assert "extension" not in runnable_tasks(17, 17)
