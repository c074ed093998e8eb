"""What every evaluation reports with: confidence intervals and JSON reports.

(Pixel quality measures, PSNR and SSIM, are in ``tinysora.nn.metrics``.)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from tinysora.io.atomic import atomic_write_text


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of the rate k / n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def write_json(report: dict, path: str | os.PathLike | None) -> None:
    """Write an eval/bench report as indented JSON (numpy scalars as floats); no-op if no path."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(path), json.dumps(report, indent=1, default=float))


def json_number(v: float) -> float | None:
    """JSON-safe number: NaN / inf -> None."""
    return float(v) if math.isfinite(v) else None
