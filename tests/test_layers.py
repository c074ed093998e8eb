"""The package's imports point one way (docs: README "Layout"), with no cycles.

Floors, lowest first; a module may import its own floor's modules of the same
top-level package and anything below, never a peer package on its floor or a floor
above:

    core:     errors, config, device, perf, io, nn, dit, vae, text, diffusion, worlds, bridge
    products: pipeline, voice, data      (peers: none imports another)
    users:    train, eval, serve, modelscope   (peers)
    bench
    cli
    __main__ (python -m tinysora)

Inside core, packages may import each other as long as no cycle forms. Imports inside
functions count too: a cycle "broken" by a late import is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tinysora

PACKAGE = Path(tinysora.__file__).parent
FLOORS = [
    {
        "errors",
        "config",
        "device",
        "perf",
        "io",
        "nn",
        "dit",
        "vae",
        "text",
        "diffusion",
        "worlds",
        "bridge",
    },
    {"pipeline", "voice", "data"},
    {"train", "eval", "serve", "modelscope"},
    {"bench"},
    {"cli"},
    {"__main__"},  # python -m tinysora
]
CORE = FLOORS[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every tinysora module ``path`` imports (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tinysora.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tinysora."):
            found.add(node.module)
            # `from tinysora.eval import tasks` names a module too
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in files} - {m} for m, p in files.items()}


def top(module: str) -> str:
    """tinysora.eval.tasks -> eval ("" for the root package)."""
    return module.split(".")[1] if "." in module else ""


def floor(module: str) -> int:
    for level, names in enumerate(FLOORS):
        if top(module) in names:
            return level
    raise AssertionError(f"{module}: package '{top(module)}' is on no floor; add it to FLOORS")


def test_every_package_is_on_a_floor():
    for module in graph():
        if module != "tinysora":
            floor(module)


def test_imports_never_point_up_or_sideways():
    bad = []
    for module, deps in graph().items():
        if module == "tinysora":  # the root re-exports the public API lazily
            continue
        for dep in deps:
            same_package = top(dep) == top(module)
            if floor(dep) > floor(module):
                bad.append(f"{module} -> {dep} (upward)")
            elif floor(dep) == floor(module) and not same_package and floor(module) > 0:
                bad.append(f"{module} -> {dep} (sideways, between peers)")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    edges = {m: d for m, d in graph().items() if m != "tinysora"}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycle = path[path.index(d) :] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_the_checker_sees_upward_imports_and_late_imports(tmp_path):
    source = tmp_path / "x.py"
    source.write_text(
        "from tinysora.train.dit import train_dit\n"
        "def f():\n    from tinysora.eval import tasks\n    import tinysora.bench.run\n"
    )
    assert imports_of(source) >= {"tinysora.train.dit", "tinysora.eval.tasks", "tinysora.bench.run"}


def test_importing_the_pipeline_loads_no_training_eval_or_bench_code():
    code = (
        "import sys, tinysora.pipeline; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('tinysora'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert "tinysora.pipeline" in loaded
    assert not [m for m in loaded if top(m) in {"train", "eval", "bench", "cli"}], loaded


def test_public_api_at_the_top_level():
    from tinysora import TextToVideoPipeline, export_to_video
    from tinysora.pipeline import TextToVideoPipeline as Pipe

    assert TextToVideoPipeline is Pipe and callable(export_to_video)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        tinysora.nothing  # noqa: B018
