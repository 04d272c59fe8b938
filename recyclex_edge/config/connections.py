"""Caps on HTTP connections that hold whoever connects, token or not (`http.connections`).

aiohttp bounds one header line and the number of headers, and closes idle keep-alive connections, but it
has no cap on connections, no budget of header bytes across connections and no deadline for the request
head; `recyclex_edge.api.guard` enforces these. The defaults keep a flood within tens of MiB and well
inside the unit's LimitNOFILE.
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from recyclex_edge.config.base import Section


class ConnectionsConfig(Section):
    """Connections and request heads."""

    max_total: int = Field(
        256,
        ge=8,
        le=16_384,
        description=(
            "Open HTTP connections at most. At the cap a new one closes the longest-idle connection, or "
            "gets 503 when every connection is busy. Keep it well under the unit's LimitNOFILE."
        ),
    )
    max_per_client: int = Field(
        32,
        ge=1,
        le=16_384,
        description=(
            "Open connections per client address; beyond it the client's longest-idle one is closed, or "
            "the new one gets 429. Behind a reverse proxy every client shares the proxy's address."
        ),
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Time a client has to send a request's line and headers, from its first byte (408).",
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=4096,
        le=1024 * 1024,
        description="Bytes of request line and headers one request may send (431).",
    )
    max_total_header_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="Bytes of unfinished request heads held across all connections; beyond it 503.",
    )

    @field_validator("max_per_client")
    @classmethod
    def _per_client_fits(cls, per_client: int, info: ValidationInfo) -> int:
        if per_client > info.data.get("max_total", per_client):
            raise ValueError("must not be above http.connections.max_total")
        return per_client
