"""The event payload published on `<prefix>/events`: ids, completion and serialisation.

`schemas/event.schema.json` in the repository is the contract for dashboards; `prepare_event()` fills in
what the daemon may leave out (schema version, device, id from `recyclex_edge.ids`, time) and turns the
event into the exact bytes that are queued and published, so a re-send after a crash is byte-identical.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from recyclex_edge.ids import new_event_id

EVENT_SCHEMA_VERSION = 1

REQUIRED_KEYS = frozenset({"class", "confidence", "probabilities", "decision", "action", "model", "timing"})


def utc_timestamp() -> str:
    """Now, in ISO 8601 UTC with milliseconds: the form every payload uses (and the pipeline's events)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def prepare_event(event: Mapping[str, Any], device_id: str) -> tuple[dict[str, Any], bytes]:
    """The complete event and its JSON bytes; raises ValueError on a malformed one (a programming error)."""
    missing = sorted(REQUIRED_KEYS - event.keys())
    if missing:
        raise ValueError(f"event lacks {', '.join(missing)}")
    complete: dict[str, Any] = {
        "schema": EVENT_SCHEMA_VERSION,
        "id": new_event_id(),
        "ts": utc_timestamp(),
        "device": device_id,
    }
    complete.update(event)
    # allow_nan=False: NaN is not JSON, and a dashboard would choke on it later rather than now.
    payload = json.dumps(complete, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return complete, payload.encode()
