"""Packaging hook: the bundled models (``weights/``: video and voice) ship inside the
wheel as ``tinysora/weights/``, so a non-editable ``pip install .`` finds them from any
directory (``tinysora.io.checkpoint.resolve_model_dir``). Every file of ``weights/``
ships (configs, safetensors, the voice's phoneme list and default reference clip), except
what :data:`NOT_SHIPPED` names. Everything else is in pyproject.toml."""

import fnmatch
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

NOT_SHIPPED = ("*.tmp", ".*", "__pycache__")


class BuildWithWeights(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads weights/ of the checkout
            return
        source = Path(__file__).resolve().parent / "weights"
        target = Path(self.build_lib) / "tinysora" / "weights"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=not_shipped)


def not_shipped(folder: str, names: list[str]) -> list[str]:
    """shutil.copytree's ``ignore``: the names of ``folder`` that stay out of the wheel."""
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in NOT_SHIPPED)]


setup(cmdclass={"build_py": BuildWithWeights})
