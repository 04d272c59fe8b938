"""Component health: every stage reports here, `/health`, MQTT and the technician page read it.

A component is `ok`, `degraded` or `failing`, with a human detail and the time its status last changed;
or `disabled`: turned off by the config (MQTT off, no fill sensors), shown so that a technician sees at
a glance what the bin does not do, and never counted against the overall status.
The overall status is the worst one, except that a failing non-critical component (MQTT, say) only
degrades the bin: it can still sort.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"
    DISABLED = "disabled"


_RANK = {Status.DISABLED: 0, Status.OK: 0, Status.DEGRADED: 1, Status.FAILING: 2}


@dataclass(frozen=True)
class ComponentHealth:
    status: Status
    detail: str
    since: datetime
    critical: bool

    def as_dict(self) -> dict[str, str]:
        return {"status": self.status.value, "detail": self.detail, "since": self.since.isoformat()}


Listener = Callable[[str, ComponentHealth], None]


class HealthRegistry:
    """Thread-safe: camera threads, the event loop and interpreter workers all report into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._components: dict[str, ComponentHealth] = {}
        self._listeners: list[Listener] = []

    def report(self, name: str, status: Status, detail: str, *, critical: bool = True) -> None:
        """Record a component's state; `since` only moves when the status itself changes."""
        now = datetime.now(UTC)
        with self._lock:
            previous = self._components.get(name)
            since = previous.since if previous is not None and previous.status == status else now
            current = ComponentHealth(status, detail, since, critical)
            self._components[name] = current
            changed = previous is None or previous.status != status or previous.detail != detail
            listeners = list(self._listeners) if changed else []
        for listener in listeners:
            listener(name, current)

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def snapshot(self) -> dict[str, ComponentHealth]:
        with self._lock:
            return dict(self._components)

    def overall(self) -> Status:
        worst = Status.OK
        for component in self.snapshot().values():
            status = component.status
            if status == Status.FAILING and not component.critical:
                status = Status.DEGRADED
            if _RANK[status] > _RANK[worst]:
                worst = status
        return worst
