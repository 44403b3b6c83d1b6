"""Errors reported as one clear message naming the file, field or parameter, without a traceback."""

from collections.abc import Sequence
from typing import Any


class StageError(RuntimeError):
    """A stage cannot proceed because of its input or parameters; the message names the file or key.

    ``artifacts`` (``components.report.Artifact``) are logged to the stage's run even though it fails
    (e.g. the Data Docs of a failed validation).
    """

    def __init__(self, message: str, artifacts: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.artifacts = list(artifacts)


class ParamsError(ValueError):
    """A parameter file is missing, malformed, or holds an invalid value; the message names file and key."""
