"""The package's front door: ``dir(tinysora)`` lists the public names, each resolves, and
importing the package loads no torch (the CLI's help stays instant)."""

from __future__ import annotations

import subprocess
import sys

import tinysora


def test_dir_lists_the_public_names_and_each_resolves():
    names = dir(tinysora)
    assert names == sorted(tinysora.__all__)
    assert {"TextToVideoPipeline", "SpeechPipeline", "export_to_video"} <= set(names)
    assert not [n for n in names if n.startswith("_") and n != "__version__"]
    for name in names:
        assert getattr(tinysora, name) is not None


def test_importing_the_package_loads_no_torch():
    code = "import sys, tinysora; dir(tinysora); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr[-500:]
