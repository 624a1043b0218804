"""The process's exit codes (README, "Commands") and the error that ends a run with exit 3."""

EXIT_OK, EXIT_DEADLINE, EXIT_USAGE, EXIT_FATAL = 0, 1, 2, 3


class FatalError(Exception):
    """A runtime error the daemon cannot work around (exit 3, one-line reason)."""
