"""The durable outbox on its own: order, acknowledgement, restarts, bounds, corruption, a full disk."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from recyclex_edge.health import HealthRegistry, Status
from recyclex_edge.outbox import MEMORY_FALLBACK_MAX_ROWS, Outbox


def fill(outbox: Outbox, count: int, start: int = 0, size_bytes: int = 100) -> list[str]:
    ids = [f"e{index:05d}" for index in range(start, start + count)]
    for event_id in ids:
        outbox.append(event_id, event_id.encode().ljust(size_bytes, b"."))
    return ids


def queued_ids(outbox: Outbox) -> list[str]:
    return [row.event_id for row in outbox.pending(0, 1_000_000)]


def test_rows_come_out_in_order_and_leave_only_when_acknowledged(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_rows=1000, max_bytes=1 << 20)
    ids = fill(outbox, 10)
    first = outbox.pending(0, 4)
    assert [row.event_id for row in first] == ids[:4]
    assert [row.event_id for row in outbox.pending(first[-1].seq, 100)] == ids[4:]
    outbox.ack([first[1], first[0]])
    assert queued_ids(outbox) == ids[2:]
    assert outbox.depth == 8 and outbox.size_bytes == 800
    outbox.ack([first[0]])  # acknowledged twice (a duplicate PUBACK): no effect
    assert outbox.depth == 8


def test_queued_rows_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path, max_rows=1000, max_bytes=1 << 20)
    ids = fill(outbox, 5)
    outbox.ack(outbox.pending(0, 1))
    outbox.close()
    reopened = Outbox(path, max_rows=1000, max_bytes=1 << 20)
    assert queued_ids(reopened) == ids[1:]
    assert reopened.depth == 4 and reopened.size_bytes == 400
    more = fill(reopened, 2, start=100)
    assert queued_ids(reopened) == ids[1:] + more, "new rows queue after the old ones"


def test_row_bound_drops_the_oldest_and_counts_the_loss(tmp_path: Path) -> None:
    health = HealthRegistry()
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path, max_rows=10, max_bytes=1 << 20, health=health)
    assert health.snapshot()["outbox"].status == Status.OK
    ids = fill(outbox, 13)
    assert queued_ids(outbox) == ids[3:]
    assert outbox.depth == 10 and outbox.lost == 3
    report = health.snapshot()["outbox"]
    assert report.status == Status.DEGRADED and "3 event(s) dropped" in report.detail
    assert not report.critical
    outbox.close()
    assert Outbox(path, max_rows=10, max_bytes=1 << 20).lost == 3, "the loss count is persisted"


def test_byte_bound_drops_the_oldest(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_rows=1000, max_bytes=1000)
    ids = fill(outbox, 15, size_bytes=100)
    assert outbox.size_bytes == 1000
    assert queued_ids(outbox) == ids[5:]
    assert outbox.lost == 5
    outbox.append("big", b"x" * 450)  # one bigger event pushes out as many small ones as it needs
    assert outbox.size_bytes <= 1000 and outbox.lost == 10
    assert queued_ids(outbox) == [*ids[10:], "big"]


def test_a_corrupt_file_is_moved_aside_and_a_fresh_outbox_works(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.write_bytes(b"this is not an SQLite database" * 100)
    health = HealthRegistry()
    outbox = Outbox(path, max_rows=1000, max_bytes=1 << 20, health=health)
    report = health.snapshot()["outbox"]
    assert report.status == Status.DEGRADED and "unreadable" in report.detail
    quarantined = list(tmp_path.glob("outbox.sqlite3.corrupt-*"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes().startswith(b"this is not")
    ids = fill(outbox, 3)
    assert queued_ids(outbox) == ids and outbox.durable


def test_a_full_disk_keeps_events_in_memory_in_order_and_recovers(tmp_path: Path) -> None:
    health = HealthRegistry()
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_rows=100_000, max_bytes=64 << 20, health=health)
    on_disk = fill(outbox, 3)
    # Fault injection: cap the database at its current size, so the next page it needs fails with
    # SQLITE_FULL, exactly what a full SD card produces.
    db = outbox._db
    assert db is not None
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count={pages}")
    in_memory = fill(outbox, 200, start=3, size_bytes=500)

    assert not outbox.durable
    report = health.snapshot()["outbox"]
    assert report.status == Status.FAILING and "full" in report.detail
    assert health.overall() == Status.DEGRADED, "the bin keeps sorting"
    assert queued_ids(outbox) == on_disk + in_memory
    assert outbox.depth == 203

    # Acknowledge some while the disk is full, then free space: the rest move to disk, in order.
    outbox.ack(outbox.pending(0, 5))
    db.execute("PRAGMA max_page_count=1073741823")
    after = fill(outbox, 1, start=1000)
    assert outbox.durable and health.snapshot()["outbox"].status == Status.OK
    assert queued_ids(outbox) == (on_disk + in_memory)[5:] + after
    (count,) = sqlite3.connect(outbox.path).execute("SELECT count(*) FROM events").fetchone()
    assert count == 199, "the memory rows are on disk now"


def test_the_memory_fallback_is_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    health = HealthRegistry()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    outbox = Outbox(blocker / "outbox.sqlite3", max_rows=100_000, max_bytes=64 << 20, health=health)
    assert health.snapshot()["outbox"].status == Status.FAILING
    ids = fill(outbox, MEMORY_FALLBACK_MAX_ROWS + 10)
    assert queued_ids(outbox) == ids[10:]
    assert outbox.lost == 10 and outbox.depth == MEMORY_FALLBACK_MAX_ROWS


def test_a_file_that_opens_only_later_takes_the_memory_rows_after_its_own(tmp_path: Path) -> None:
    # The state directory is a link to a volume that is not mounted yet; the volume holds an outbox
    # with events from before the restart.
    staged = tmp_path / "staged-volume"
    earlier = Outbox(staged / "outbox.sqlite3", max_rows=1000, max_bytes=1 << 20)
    from_before = fill(earlier, 3, start=0)
    earlier.close()
    state = tmp_path / "state"
    state.symlink_to(tmp_path / "volume")
    health = HealthRegistry()
    outbox = Outbox(
        state / "outbox.sqlite3", max_rows=1000, max_bytes=1 << 20, health=health, reopen_interval_s=0
    )
    in_memory = fill(outbox, 4, start=100)
    report = health.snapshot()["outbox"]
    assert not outbox.durable and report.status == Status.FAILING
    assert "links to" in report.detail and "volume" in report.detail, report.detail
    in_flight = outbox.pending(0, 2)
    generation = outbox.generation

    staged.rename(tmp_path / "volume")  # mounted
    assert queued_ids(outbox) == from_before + in_memory, "the file's older rows go first"
    assert outbox.durable and health.snapshot()["outbox"].status == Status.OK
    assert outbox.generation != generation
    outbox.ack(in_flight)  # stale seqs that now name other rows: must not delete anything
    assert outbox.depth == 7
    later = fill(outbox, 1, start=200)
    assert queued_ids(outbox) == from_before + in_memory + later
    (count,) = sqlite3.connect(outbox.path).execute("SELECT count(*) FROM events").fetchone()
    assert count == 8, "the memory rows are on disk now"
    outbox.ack(outbox.pending(0, 3))
    assert queued_ids(outbox) == in_memory + later


def test_opening_is_retried_at_most_once_per_interval(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.symlink_to(tmp_path / "volume")
    outbox = Outbox(state / "outbox.sqlite3", max_rows=1000, max_bytes=1 << 20, reopen_interval_s=3600)
    fill(outbox, 2)
    (tmp_path / "volume").mkdir()
    fill(outbox, 2, start=2)
    assert not outbox.durable, "no second try within the interval"


def test_a_closed_outbox_does_not_open_its_file_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.symlink_to(tmp_path / "volume")
    outbox = Outbox(state / "outbox.sqlite3", max_rows=1000, max_bytes=1 << 20, reopen_interval_s=0)
    outbox.close()
    (tmp_path / "volume").mkdir()
    fill(outbox, 1)  # a late event from a stage still stopping
    assert not outbox.durable and not (tmp_path / "volume" / "outbox.sqlite3").exists()


def test_an_acknowledgement_out_of_order_removes_that_row_only(tmp_path: Path) -> None:
    """PUBACKs may come in any order (QoS 1 with several in flight): acking a later row must not take
    the earlier, still unacknowledged ones with it."""
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path, max_rows=1000, max_bytes=1 << 20)
    ids = fill(outbox, 5)
    rows = outbox.pending(0, 5)
    outbox.ack([rows[3]])
    assert queued_ids(outbox) == [ids[0], ids[1], ids[2], ids[4]]
    assert outbox.depth == 4 and outbox.size_bytes == 400
    outbox.close()
    assert queued_ids(Outbox(path, max_rows=1000, max_bytes=1 << 20)) == [ids[0], ids[1], ids[2], ids[4]]


def test_the_oldest_age_follows_the_oldest_unacknowledged_row(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path, max_rows=1000, max_bytes=1 << 20)
    assert outbox.oldest_age_s == 0
    fill(outbox, 3)
    with sqlite3.connect(path) as db:  # as if the first row had waited 600 s, the second 300 s
        db.execute("UPDATE events SET queued_at = queued_at - 600 WHERE seq = 1")
        db.execute("UPDATE events SET queued_at = queued_at - 300 WHERE seq = 2")
    outbox.close()
    outbox = Outbox(path, max_rows=1000, max_bytes=1 << 20)
    assert 600 <= outbox.oldest_age_s < 660, "kept across a restart"
    rows = outbox.pending(0, 3)
    outbox.ack([rows[1]])
    assert 600 <= outbox.oldest_age_s < 660, "the oldest is still waiting"
    outbox.ack([rows[0]])
    assert outbox.oldest_age_s < 60
    outbox.ack([rows[2]])
    assert outbox.oldest_age_s == 0


def test_a_file_from_before_the_queued_at_column_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, payload BLOB NOT NULL,"
            " size_bytes INTEGER NOT NULL);"
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
            "INSERT INTO events VALUES (1, 'old', x'6f6c64', 3);"
        )
    outbox = Outbox(path, max_rows=1000, max_bytes=1 << 20)
    assert 0 <= outbox.oldest_age_s < 60, "its age counts from when this outbox opened it"
    fill(outbox, 1, start=7)
    assert queued_ids(outbox) == ["old", "e00007"]
