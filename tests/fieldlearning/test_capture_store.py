"""The capture store on its own: one JPEG and one row per item, the quota's eviction order, retention,
labels, and failures (a full database, an unwritable photo folder) that raise CaptureError."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from recyclex_edge.fieldlearning import CaptureError, CaptureStore
from recyclex_edge.fieldlearning.store import ROW_OVERHEAD_BYTES, Features
from recyclex_edge.ids import new_event_id
from tests.conftest import val_photos

LABELS = ("cardboard", "glass", "metal", "paper", "plastic", "trash")


def event(label: str = "glass", decision: str = "uncertain") -> dict[str, object]:
    return {
        "id": new_event_id(),
        "class": label,
        "confidence": 0.42,
        "decision": decision,
        "model": {"name": "m", "version": "1.1.0"},
    }


def features(seed: int = 0, embedding: bool = True) -> Features:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(len(LABELS))).astype(np.float32)
    return Features(p, rng.normal(size=16).astype(np.float32) if embedding else None)


def photo_bytes(index: int = 0) -> bytes:
    return val_photos("glass")[index].read_bytes()


def add(store: CaptureStore, index: int = 0, *, label: str | None = None, same_photo: bool = False) -> str:
    item = event()
    store.add(
        item,
        photo_bytes(0 if same_photo else index),
        features(index),
        model_sha256="a" * 64,
        reason="uncertain",
        width=512,
        height=384,
        label=label,
        labelled_by="test" if label else None,
    )
    return str(item["id"])


def test_one_jpeg_and_one_row_per_item_and_files_are_never_rewritten(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", max_bytes=64 << 20, retention_s=86400)
    first = add(store, 0)
    photo = store.image_path(first)
    written = photo.stat().st_mtime_ns, photo.stat().st_ino
    second = add(store, 1)
    store.set_label(first, "glass", by="token:alice")
    assert sorted(p.name for p in store.images.iterdir()) == sorted([f"{first}.jpg", f"{second}.jpg"])
    assert store.image(first) == photo_bytes(0), "the photo is stored byte for byte"
    assert (photo.stat().st_mtime_ns, photo.stat().st_ino) == written, "labelling does not touch the file"
    (rows,) = (
        sqlite3.connect(store.folder / "captures.sqlite3").execute("SELECT COUNT(*) FROM items").fetchone()
    )
    assert rows == 2
    assert [i.id for i in store.items()] == [second, first], "newest first"
    assert [i.id for i in store.items(labelled=True)] == [first]
    assert [i.id for i in store.items(labelled=False)] == [second]
    labelled = store.get(first)
    assert labelled is not None and labelled.label == "glass" and labelled.labelled_by == "token:alice"
    found = store.features("a" * 64, [first, second])
    np.testing.assert_array_equal(found[first].probabilities, features(0).probabilities)
    assert found[second].embedding is not None and found[second].embedding.shape == (16,)
    assert store.features("b" * 64, [first]) == {}, "features are kept per model"


def test_the_quota_evicts_unlabelled_first_then_exported_then_the_oldest_labelled(tmp_path: Path) -> None:
    size = len(photo_bytes(0)) + ROW_OVERHEAD_BYTES + features(0).probabilities.nbytes + 64
    store = CaptureStore(tmp_path / "captures", max_bytes=4 * size + 10, retention_s=86400)
    old_labelled = add(store, 0, label="glass", same_photo=True)
    exported = add(store, 1, label="metal", same_photo=True)
    store.mark_exported([exported])
    unlabelled = add(store, 2, same_photo=True)
    young_labelled = add(store, 3, label="plastic", same_photo=True)
    assert store.usage().items == 4

    newest = add(
        store, 4, same_photo=True
    )  # room for one more: the unlabelled one goes, though it is not the oldest
    assert {i.id for i in store.items()} == {old_labelled, exported, young_labelled, newest}
    assert not store.image_path(unlabelled).exists()
    newer = add(store, 5, label="glass", same_photo=True)  # the unlabelled newest goes first again
    assert {i.id for i in store.items()} == {old_labelled, exported, young_labelled, newer}
    add(store, 0, label="glass", same_photo=True)  # then the exported one
    assert exported not in {i.id for i in store.items()}
    add(store, 1, label="glass", same_photo=True)  # then, only labels left, the oldest labelled
    assert old_labelled not in {i.id for i in store.items()}
    assert store.usage().bytes <= store.max_bytes


def test_retention_removes_old_unlabelled_and_exported_items_but_keeps_unexported_labels(
    tmp_path: Path,
) -> None:
    store = CaptureStore(tmp_path / "captures", max_bytes=64 << 20, retention_s=3600)
    unlabelled = add(store, 0)
    labelled = add(store, 1, label="glass")
    exported = add(store, 2, label="metal")
    store.mark_exported([exported])
    assert store.expire(time.time() + 60) == 0
    assert store.expire(time.time() + 7200) == 2
    assert [i.id for i in store.items()] == [labelled]
    assert not store.image_path(unlabelled).exists() and not store.image_path(exported).exists()


def test_a_label_can_be_taken_back(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", max_bytes=64 << 20, retention_s=3600)
    item = add(store)
    store.set_label(item, "glass", by="a")
    undone = store.set_label(item, None, by="a")
    assert undone is not None and undone.label is None and undone.labelled_by is None
    assert store.set_label("no-such-item", "glass", by="a") is None


def test_a_full_database_raises_capture_error_and_leaves_no_orphan_photo(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", max_bytes=64 << 20, retention_s=3600)
    add(store, 0)
    # SQLITE_FULL, as a full SD card gives it: cap the file at its current size.
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count={pages}")
    with pytest.raises(CaptureError, match="full"):
        for index in range(1, 40):
            add(store, index % 10)
    assert len(list(store.images.iterdir())) == store.usage().items, "no photo without its row"


def test_an_unwritable_photo_folder_raises_capture_error(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", max_bytes=64 << 20, retention_s=3600)
    store.images.rmdir()
    store.images.write_text("not a folder")  # as root, permissions would not stop us; this does
    with pytest.raises(CaptureError, match="could not be written"):
        add(store)
    assert store.usage().items == 0


def test_orphan_photos_from_a_crash_are_removed(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", max_bytes=64 << 20, retention_s=3600)
    kept = add(store)
    (store.images / "01ORPHAN.jpg").write_bytes(b"x")
    (store.images / "01HALF.tmp").write_bytes(b"x")
    assert store.remove_orphans() == 2
    assert [p.stem for p in store.images.iterdir()] == [kept]
