"""The base class of every error meant for a user: the CLI prints it as one line (exit 2)."""


class UserError(Exception):
    """Bad input, missing file or weights, unusable config: the message names the fix."""
