from __future__ import annotations

from typing import Literal

from pydantic import Field

from recyclex_edge.config.base import Section


class LoggingConfig(Section):
    """What goes to stderr (journald under systemd)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Minimum level logged.")
    format: Literal["text", "json"] = Field("text", description="'json' for one JSON object per line.")
