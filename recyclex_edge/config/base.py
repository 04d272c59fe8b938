"""The base every config section derives from: strict, immutable, every field described."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. Unknown keys are errors, because a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
