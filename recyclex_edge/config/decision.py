from __future__ import annotations

from typing import Annotated

from pydantic import Field

from recyclex_edge.config.base import Section


class DecisionConfig(Section):
    """When a classification is trusted enough to sort by it."""

    threshold: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Minimum confidence to accept a class. Empty: the model card's recommended threshold.",
    )
    class_thresholds: dict[str, Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=dict, description="Per-class overrides of the threshold, e.g. {glass: 0.9}."
    )
    burst_frames: int = Field(
        3,
        ge=1,
        le=15,
        description="Frames classified per item once it has settled; their probabilities are averaged.",
    )
    burst_timeout_s: float = Field(
        2.0,
        gt=0,
        le=30,
        description="Longest wait for the burst's frames; fewer frames are used if they do not come.",
    )
