"""Packaging hook: the bundled model (``weights/``) ships inside the wheel as
``tinysora/weights/``, so a non-editable ``pip install .`` finds it from any directory
(``tinysora.io.checkpoint.resolve_model_dir``). Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEIGHT_FILES = ("*.json", "*.safetensors", "README.md")


class BuildWithWeights(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads weights/ of the checkout
            return
        source = Path(__file__).resolve().parent / "weights"
        target = Path(self.build_lib) / "tinysora" / "weights"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=_not_weights)


def _not_weights(folder: str, names: list[str]) -> list[str]:
    """shutil.copytree's ``ignore``: every file of ``folder`` but the weight files."""
    keep = {path.name for pattern in WEIGHT_FILES for path in Path(folder).glob(pattern)}
    return [n for n in names if n not in keep and not (Path(folder) / n).is_dir()]


setup(cmdclass={"build_py": BuildWithWeights})
