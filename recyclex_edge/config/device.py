from __future__ import annotations

from pydantic import Field

from recyclex_edge.config.base import Section


class DeviceConfig(Section):
    """Who this bin is. The id names it in MQTT topics, events and the technician page."""

    id: str = Field(
        "bin-001",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="Unique bin id: letters, digits, '-' and '_', 1-64 characters (used in MQTT topics).",
    )
    name: str = Field("", max_length=120, description="Human name shown on dashboards.")
    location: str = Field("", max_length=200, description="Free text: site, hall, position.")
