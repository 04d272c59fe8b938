"""The capture store: items kept for labelling, one JPEG file and one SQLite row each, under a quota.

Layout under `<state_dir>/captures/`:

    captures.sqlite3        one row per item (event, probabilities, label) and its features per model
    images/<event id>.jpg   the burst's sharpest frame at camera resolution, written once, never rewritten

The crop the model saw is not stored separately: preprocessing is bit-identical on every CPU
(`recyclex_edge/resize.py`), so it is the stored frame through the card's resize, and a new model with
another input size needs the frame anyway.

Bounds: `max_bytes` of photos and rows. When a new item would exceed it, items go in this order:
unlabelled oldest first, then labelled ones already exported, then (only when nothing else is left) the
oldest labelled ones. `expire()` removes unlabelled and exported items older than the retention.
Every failure (disk full, read-only card, corrupt file) raises `CaptureError`; the caller degrades
health and sorts on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recyclex_edge.errors import RecycleXError

log = logging.getLogger("recyclex_edge.fieldlearning.store")

# Rows cost a little too: the event JSON, probabilities and features (an embedding of 1280 float32 is
# 5 KiB). Counted as a flat allowance on top of the measured feature bytes.
ROW_OVERHEAD_BYTES = 1024
NOT_WASTE = "none"  # the label for "no item / not waste" (key 0 on the Review page)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,            -- the event id (a ULID: sorts by time)
    captured_at REAL NOT NULL,      -- unix seconds
    reason TEXT NOT NULL,           -- 'uncertain', 'sample' or 'import'
    predicted TEXT NOT NULL,        -- the class the bin decided on before any label
    confidence REAL NOT NULL,
    decision TEXT NOT NULL,
    event TEXT NOT NULL,            -- the event JSON as published
    model_version TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,    -- the JPEG plus this row's allowance, for the quota
    label TEXT,
    labelled_by TEXT,
    labelled_at TEXT,
    exported_at TEXT
);
CREATE INDEX IF NOT EXISTS items_label ON items(label);
CREATE TABLE IF NOT EXISTS features (
    item_id TEXT NOT NULL REFERENCES items(id) ON DELETE CASCADE,
    model_sha256 TEXT NOT NULL,
    probabilities BLOB NOT NULL,    -- float32, in the model's label order
    embedding BLOB,                 -- float32, or NULL for a model without an embedding output
    PRIMARY KEY (item_id, model_sha256)
);
"""


class CaptureError(RecycleXError):
    """The store cannot be written or read (disk full, read-only, corrupt)."""


@dataclass(frozen=True)
class Features:
    """What one model said about an item: its probabilities and, when it has one, its embedding."""

    probabilities: np.ndarray
    embedding: np.ndarray | None


@dataclass(frozen=True)
class CapturedItem:
    id: str
    captured_at: float
    reason: str
    predicted: str
    confidence: float
    decision: str
    model_version: str
    width: int
    height: int
    label: str | None
    labelled_by: str | None
    labelled_at: str | None
    exported_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "captured_at": datetime.fromtimestamp(self.captured_at, UTC).isoformat(timespec="seconds"),
            "reason": self.reason,
            "class": self.predicted,
            "confidence": round(self.confidence, 6),
            "decision": self.decision,
            "model_version": self.model_version,
            "width": self.width,
            "height": self.height,
            "label": self.label,
            "labelled_by": self.labelled_by,
            "labelled_at": self.labelled_at,
        }


@dataclass(frozen=True)
class Usage:
    items: int
    labelled: int
    unlabelled: int
    bytes: int
    max_bytes: int


_ITEM_COLUMNS = (
    "id, captured_at, reason, predicted, confidence, decision, model_version, width, height, label, "
    "labelled_by, labelled_at, exported_at"
)
# Eviction order: unlabelled first, then labelled-and-exported, then labelled; oldest first within each.
_EVICTION_ORDER = (
    "CASE WHEN label IS NULL THEN 0 WHEN exported_at IS NOT NULL THEN 1 ELSE 2 END, captured_at, id"
)


def _vector(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype=np.float32).copy()


class CaptureStore:
    """Thread-safe; every method raises CaptureError when the disk or the file fails.

    >>> store = CaptureStore(state_dir / "captures", max_bytes=512 << 20, retention_s=30 * 86400)
    >>> store.add(event, jpeg, features, model_sha256=card.sha256, reason="uncertain", width=640, height=480)
    >>> store.set_label(event["id"], "glass", by="token:alice")
    """

    def __init__(self, folder: Path, *, max_bytes: int, retention_s: float) -> None:
        self.folder = folder
        self.images = folder / "images"
        self.max_bytes = max_bytes
        self.retention_s = retention_s
        self._lock = threading.Lock()
        try:
            self.images.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(folder / "captures.sqlite3", check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._db.commit()
        except (OSError, sqlite3.Error) as error:
            raise CaptureError(f"the capture store {folder} cannot be opened: {error}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                with self._db:
                    yield self._db
            except (OSError, sqlite3.Error) as error:
                raise CaptureError(f"the capture store could not {what}: {error}") from None

    def image_path(self, item_id: str) -> Path:
        return self.images / f"{item_id}.jpg"

    # -- writing --------------------------------------------------------------------------------------

    def add(
        self,
        event: dict[str, Any],
        jpeg: bytes,
        features: Features,
        *,
        model_sha256: str,
        reason: str,
        width: int,
        height: int,
        label: str | None = None,
        labelled_by: str | None = None,
    ) -> None:
        """Keep one item: its photo first (written once), then its row; evicts to stay under the quota."""
        item_id = str(event["id"])
        embedding_bytes = 0 if features.embedding is None else features.embedding.nbytes
        size = len(jpeg) + ROW_OVERHEAD_BYTES + features.probabilities.nbytes + embedding_bytes
        if size > self.max_bytes:
            raise CaptureError(f"one item ({size} bytes) is larger than capture.max_mib allows")
        self._make_room(size)
        path = self.image_path(item_id)
        temporary = path.with_suffix(".tmp")
        try:
            with temporary.open("wb") as handle:
                handle.write(jpeg)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(path)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise CaptureError(f"the photo {path} could not be written: {error.strerror or error}") from None
        labelled_at = datetime.now(UTC).isoformat(timespec="seconds") if label is not None else None
        try:
            with self._transaction("keep an item") as db:
                db.execute(
                    f"INSERT INTO items ({_ITEM_COLUMNS}, event, size_bytes) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                    (
                        item_id,
                        time.time(),
                        reason,
                        str(event["class"]),
                        float(event["confidence"]),
                        str(event["decision"]),
                        str(event["model"]["version"]),
                        width,
                        height,
                        label,
                        labelled_by,
                        labelled_at,
                        json.dumps(event, separators=(",", ":")),
                        size,
                    ),
                )
                self._put_features(db, item_id, model_sha256, features)
        except CaptureError:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            raise

    def put_features(self, item_id: str, model_sha256: str, features: Features) -> None:
        """Features of a stored item under another model (re-embedding after a model change)."""
        with self._transaction("store features") as db:
            self._put_features(db, item_id, model_sha256, features)

    @staticmethod
    def _put_features(db: sqlite3.Connection, item_id: str, model_sha256: str, features: Features) -> None:
        db.execute(
            "INSERT OR REPLACE INTO features (item_id, model_sha256, probabilities, embedding) "
            "VALUES (?, ?, ?, ?)",
            (
                item_id,
                model_sha256,
                np.asarray(features.probabilities, dtype=np.float32).tobytes(),
                None
                if features.embedding is None
                else np.asarray(features.embedding, dtype=np.float32).tobytes(),
            ),
        )

    def set_label(self, item_id: str, label: str | None, *, by: str) -> CapturedItem | None:
        """Label (or, with None, unlabel) one item; None when there is no such item."""
        labelled_at = datetime.now(UTC).isoformat(timespec="seconds") if label is not None else None
        with self._transaction("store a label") as db:
            changed = db.execute(
                "UPDATE items SET label = ?, labelled_by = ?, labelled_at = ?, exported_at = NULL "
                "WHERE id = ?",
                (label, by if label is not None else None, labelled_at, item_id),
            ).rowcount
        return self.get(item_id) if changed else None

    def mark_exported(self, item_ids: Iterable[str]) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._transaction("mark items exported") as db:
            db.executemany("UPDATE items SET exported_at = ? WHERE id = ?", [(now, i) for i in item_ids])

    def _delete(self, db: sqlite3.Connection, item_ids: list[str]) -> None:
        db.executemany("DELETE FROM items WHERE id = ?", [(i,) for i in item_ids])
        for item_id in item_ids:
            self.image_path(item_id).unlink(missing_ok=True)

    def _make_room(self, size: int) -> None:
        with self._transaction("make room") as db:
            (used,) = db.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM items").fetchone()
            excess = used + size - self.max_bytes
            if excess <= 0:
                return
            victims: list[str] = []
            for item_id, item_size in db.execute(
                f"SELECT id, size_bytes FROM items ORDER BY {_EVICTION_ORDER}"
            ):
                victims.append(item_id)
                excess -= item_size
                if excess <= 0:
                    break
            self._delete(db, victims)
        log.info("capture store full: %d older item(s) removed to make room", len(victims))

    def expire(self, now_s: float | None = None) -> int:
        """Remove unlabelled and exported items older than the retention; the number removed."""
        cutoff = (time.time() if now_s is None else now_s) - self.retention_s
        with self._transaction("expire old items") as db:
            victims = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM items WHERE captured_at < ? "
                    "AND (label IS NULL OR exported_at IS NOT NULL)",
                    (cutoff,),
                )
            ]
            self._delete(db, victims)
        return len(victims)

    def remove_orphans(self) -> int:
        """Photos without a row (a crash between the two writes): removed at start."""
        with self._transaction("list items") as db:
            known = {row[0] for row in db.execute("SELECT id FROM items")}
        orphans = [p for p in self.images.iterdir() if p.stem not in known or p.suffix != ".jpg"]
        for path in orphans:
            path.unlink(missing_ok=True)
        return len(orphans)

    # -- reading --------------------------------------------------------------------------------------

    def get(self, item_id: str) -> CapturedItem | None:
        with self._transaction("read an item") as db:
            row = db.execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
        return CapturedItem(*row) if row is not None else None

    def items(
        self, *, labelled: bool | None = None, limit: int = 50, before: str | None = None
    ) -> list[CapturedItem]:
        """Newest first; `before` an id pages on; `labelled` filters."""
        where, args = [], []
        if labelled is not None:
            where.append("label IS NOT NULL" if labelled else "label IS NULL")
        if before is not None:
            where.append("id < ?")
            args.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._transaction("list items") as db:
            rows = db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items {clause} ORDER BY id DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [CapturedItem(*row) for row in rows]

    def event(self, item_id: str) -> dict[str, Any] | None:
        with self._transaction("read an event") as db:
            row = db.execute("SELECT event FROM items WHERE id = ?", (item_id,)).fetchone()
        return json.loads(row[0]) if row is not None else None

    def image(self, item_id: str) -> bytes | None:
        try:
            return self.image_path(item_id).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise CaptureError(f"the photo of {item_id} cannot be read: {error.strerror}") from None

    def labelled(self) -> list[CapturedItem]:
        """Every labelled item, oldest first."""
        with self._transaction("list labelled items") as db:
            rows = db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE label IS NOT NULL ORDER BY id"
            ).fetchall()
        return [CapturedItem(*row) for row in rows]

    def features(self, model_sha256: str, item_ids: Iterable[str]) -> dict[str, Features]:
        """The stored features of these items under that model (items without any are left out)."""
        wanted = set(item_ids)
        with self._transaction("read features") as db:
            rows = db.execute(
                "SELECT item_id, probabilities, embedding FROM features WHERE model_sha256 = ?",
                (model_sha256,),
            ).fetchall()
        found: dict[str, Features] = {}
        for item_id, probabilities, embedding in rows:
            if item_id in wanted:
                vector = _vector(probabilities)
                assert vector is not None
                found[item_id] = Features(vector, _vector(embedding))
        return found

    def counts(self) -> dict[str, int]:
        """Labelled items per label."""
        with self._transaction("count labels") as db:
            rows = db.execute(
                "SELECT label, COUNT(*) FROM items WHERE label IS NOT NULL GROUP BY label ORDER BY label"
            ).fetchall()
        return {label: count for label, count in rows}

    def usage(self) -> Usage:
        with self._transaction("measure usage") as db:
            items, labelled, used = db.execute(
                "SELECT COUNT(*), COUNT(label), COALESCE(SUM(size_bytes), 0) FROM items"
            ).fetchone()
        return Usage(items, labelled, items - labelled, used, self.max_bytes)
