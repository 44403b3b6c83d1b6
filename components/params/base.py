"""Base class of every config section (kept apart from components.config to avoid import cycles)."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """No unknown keys, no silent type coercion (``"5"`` is not an int), immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
