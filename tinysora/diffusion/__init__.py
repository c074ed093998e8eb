"""Rectified flow, samplers and conditioning masks. The sampler names live here, free of
torch, so the CLI can offer them as argparse choices without loading the models."""

SAMPLER_NAMES = ("euler", "heun", "dpmpp_2m")  # samplers.SAMPLERS maps each to its function
