"""Base of every config model."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base model: unknown keys are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid")
