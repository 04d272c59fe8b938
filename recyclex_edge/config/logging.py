from __future__ import annotations

from typing import Literal

from pydantic import Field

from recyclex_edge.config.base import Section


class LoggingConfig(Section):
    """What goes to stderr (journald under systemd), and how much of it a flood may write."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Minimum level logged.")
    format: Literal["text", "json"] = Field("text", description="'json' for one JSON object per line.")
    max_lines_per_s: float = Field(
        5.0,
        gt=0,
        le=10_000,
        description=(
            "Lines per second one kind of message may write (the same message, or the access log of one "
            "client), and 4 times that for one logger's messages together; beyond it they are counted "
            "and summed up as 'N similar messages suppressed'."
        ),
    )
    burst_lines: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Lines one kind of message may write at once before the rate applies.",
    )
