"""The audit log: every model operation, who asked, and what came of it.

One JSON object per line in `<state_dir>/models/audit.log`: `{"ts", "who", "action", "target",
"ok", "detail"}`. `who` is `token:<name>` / `jwt:<sub>` (HTTP), `mqtt:<client>` (MQTT), `cli:<user>`,
or `daemon` (an automatic rollback or promotion). The file rotates once at MAX_BYTES (one `.1` kept).
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MAX_BYTES = 1024 * 1024


class AuditLog:
    """Appends records durably; `recent()` reads the last ones back for the page and the API."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(
        self, who: str, action: str, target: str | None, *, ok: bool, detail: str = ""
    ) -> dict[str, Any]:
        record = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "who": who,
            "action": action,
            "target": target,
            "ok": ok,
            "detail": detail,
        }
        line = (json.dumps(record) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size + len(line) > MAX_BYTES:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(descriptor, line)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        return record

    def recent(self, count: int = 50) -> list[dict[str, Any]]:
        """The last `count` records, newest first; unreadable lines are skipped."""
        try:
            with self.path.open("r", encoding="utf-8", errors="replace") as handle:
                lines = deque(handle, maxlen=count)
        except FileNotFoundError:
            return []
        records = []
        for line in reversed(lines):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records
