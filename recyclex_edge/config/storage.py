from __future__ import annotations

from pathlib import Path

from pydantic import Field

from recyclex_edge.config.base import Section


class OutboxConfig(Section):
    """Bounds of the durable event outbox (`<state_dir>/outbox.sqlite3`). At the bound the oldest unsent
    events are dropped, counted and reported in /health, MQTT state and stats."""

    max_rows: int = Field(
        100_000,
        ge=100,
        le=10_000_000,
        description="Unsent events kept at most (about 10 days of a busy bin).",
    )
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        le=4 * 1024 * 1024 * 1024,
        description="Bytes of unsent event payloads kept at most; the file itself is a little larger.",
    )


class StorageConfig(Section):
    """Where the daemon keeps what must survive a restart."""

    state_dir: Path = Field(
        Path("/var/lib/recyclex-edge"),
        description="Counters, the event outbox, temporary uploads. systemd's StateDirectory= creates it.",
    )
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="The durable MQTT event outbox.")
