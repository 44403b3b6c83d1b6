"""Errors a stage raises for bad input: reported as one clear message, without a traceback."""


class StageError(RuntimeError):
    """A stage cannot proceed because of its input or parameters; the message names the file or key."""
