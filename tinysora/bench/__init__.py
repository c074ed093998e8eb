"""Benchmarks: throughput, MFU against the measured matmul peak, side by side with diffusers.

``tinysora bench`` (:mod:`tinysora.bench.run`) writes one JSON report; the sections
live in :mod:`~tinysora.bench.dit` (training step, scaling), :mod:`~tinysora.bench.compare`
(diffusers LTX-Video / Latte at equal sizes), :mod:`~tinysora.bench.sampling`
(generation, end to end, sampler loop, VAE) and :mod:`~tinysora.bench.timing` (medians,
machine info, matmul peak, FLOP counting).
"""
