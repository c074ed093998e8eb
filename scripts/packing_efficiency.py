"""Token efficiency (real / total tokens) of Patch n' Pack vs padding and aspect buckets.

    python scripts/packing_efficiency.py [--clips 20000] [--budget 1024] [--json OUT]

The same stream of clip sizes (the default training mixture, a fixed seed) is batched
three ways: packed into rows of ``budget`` tokens (first-fit decreasing over windows of
64 clips, and with the planner that picks sizes to fill rows), padded to the longest
clip of each batch, and grouped into aspect/length buckets padded within the bucket.
"""

from __future__ import annotations

import argparse
import json

from tinysora.data.packing import (
    Mixture,
    bucketed_efficiency,
    packed_efficiency,
    padded_efficiency,
    plan_row,
)
from tinysora.worlds.shapes import SplitMix64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20000)
    parser.add_argument("--budget", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8, help="clips per padded batch")
    parser.add_argument("--json")
    args = parser.parse_args()
    mixture = Mixture()
    rng = SplitMix64(2026)
    sizes = [mixture.draw(rng) for _ in range(args.clips)]
    lengths = [mixture.tokens(*s) for s in sizes]
    planned = [plan_row(mixture, args.budget, rng) for _ in range(500)]
    report = {
        "clips": args.clips,
        "budget": args.budget,
        "batch": args.batch,
        "mean_tokens_per_clip": sum(lengths) / len(lengths),
        "packed_stream": packed_efficiency(lengths, args.budget),
        "packed_planner": sum(mixture.tokens(*s) for p in planned for s in p)
        / (len(planned) * args.budget),
        "padded_to_longest": padded_efficiency(lengths, args.batch),
        "aspect_buckets": bucketed_efficiency(sizes, mixture, args.batch),
    }
    for key, value in report.items():
        print(f"{key:22s} {value:.4g}" if isinstance(value, float) else f"{key:22s} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
