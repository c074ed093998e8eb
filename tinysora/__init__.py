"""tinysora: a Sora-style text-to-video system you can train on a laptop CPU."""

__version__ = "0.1.0"
