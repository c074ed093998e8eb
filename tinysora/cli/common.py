"""What every command module shares: the one-line error and the help strings."""

from __future__ import annotations

from tinysora.errors import UserError

DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when there is a GPU, else cpu)"
ALLOW_PICKLE_HELP = "diffusers-format models: also load .bin / .pt weights (weights_only)"


class CliError(UserError):
    """A user-facing error: printed as one line, exit code 2."""
