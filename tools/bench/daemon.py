"""Benchmark the sorting daemon on replayed items; prints one JSON document.

    .venv/bin/python tools/bench/daemon.py [--items 20] [--soak-items 720]

1. Latency: real-time replay (15 fps) of val photos through the whole daemon with mock GPIO; for each
   item, deposit-settled -> first actuator command (settled_to_decided + decided_to_actuated), p50/p90.
2. Memory: a long real-time replay (default 720 items, an hour's worth at one item every 5 s, here
   compressed to about one item a second with instant sorter moves); process RSS after the first 60
   items vs after the last. Target: within 5%. (Unpaced replay cannot be used: the burst would be taken
   after the replayed item has already left the scene.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from support import free_port, rss_mib

from recyclex_edge.api import EVENTS
from recyclex_edge.config import load_config
from recyclex_edge.daemon import Daemon

REPO = Path(__file__).resolve().parents[2]
VAL = REPO.parent / "shared" / "datasets" / "trashnet" / "val"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[int(fraction * (len(ordered) - 1))]


async def run(overrides: list[str], items: int, paced: bool, on_item: Any = None) -> list[dict[str, Any]]:
    config = load_config(REPO / "config" / "demo.yaml", overrides)
    daemon = Daemon(config, environ={}, paced=paced)
    task = asyncio.create_task(daemon.serve())
    await daemon.started.wait()
    assert daemon.app is not None
    events: list[dict[str, Any]] = []
    with daemon.app[EVENTS].subscribe() as subscription:
        while len(events) < items:
            event, _ = await subscription.get()
            events.append(event)
            if len(events) % 20 == 0:
                print(f"{len(events)} items", file=sys.stderr, flush=True)
            if on_item is not None:
                on_item(len(events))
    daemon.request_stop()
    await task
    return events


async def soak_for(overrides: list[str], minutes: float) -> dict[str, Any]:
    """Real-time replay with the default deposit timing (about 5 s an item) for `minutes`."""
    config = load_config(REPO / "config" / "demo.yaml", overrides)
    daemon = Daemon(config, environ={}, paced=True)
    task = asyncio.create_task(daemon.serve())
    await daemon.started.wait()
    assert daemon.app is not None
    items = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    rss_first_minute: float | None = None
    with daemon.app[EVENTS].subscribe() as subscription:
        while (elapsed := loop.time() - started) < minutes * 60:
            if rss_first_minute is None and elapsed >= 60:
                rss_first_minute = rss_mib()
            try:
                await asyncio.wait_for(subscription.get(), timeout=5)
                items += 1
            except TimeoutError:
                pass
    end = rss_mib()
    daemon.request_stop()
    await task
    assert rss_first_minute is not None
    return {
        "minutes": minutes,
        "items": items,
        "rss_after_first_minute_mib": round(rss_first_minute, 1),
        "rss_at_end_mib": round(end, 1),
        "growth_fraction": round(end / rss_first_minute - 1, 4),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--soak-items", type=int, default=720, help="0 measures the latency only")
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=0.0,
        help="instead of the item-count soak: replay in real time (5 s per item) for this long and compare "
        "RSS after the first minute with RSS at the end",
    )
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="recyclex-bench-"))
    common = [
        f"camera.source=replay:{VAL}",
        "camera.replay.order=shuffled",
        f"http.port={free_port()}",
        f"storage.state_dir={state}",
        "logging.level=WARNING",
    ]

    if args.soak_minutes:
        report = await soak_for(common, args.soak_minutes)
        report["rss_target_growth_max"] = 0.05
        print(json.dumps(report, indent=2))
        return
    events = await run([*common, "camera.replay.empty_s=0.8", "camera.replay.dwell_s=1.6"], args.items, True)
    latencies = [
        e["timing"]["settled_to_decided_ms"] + e["timing"]["decided_to_actuated_ms"]
        for e in events
        if e["timing"]["decided_to_actuated_ms"] is not None
    ]
    report: dict[str, Any] = {
        "items": len(events),
        "settled_to_actuated_ms": {
            "p50": round(statistics.median(latencies), 1),
            "p90": round(percentile(latencies, 0.9), 1),
        },
        "settled_to_decided_ms_p50": round(
            statistics.median(e["timing"]["settled_to_decided_ms"] for e in events), 1
        ),
        "burst_frames": events[0]["timing"]["frames"],
    }
    if args.soak_items <= 0:  # latency only
        print(json.dumps(report, indent=2))
        return

    marks: dict[str, float] = {}
    warm_items = min(60, args.soak_items // 4)

    def mark(count: int) -> None:
        if count == warm_items:
            marks["warm"] = rss_mib()

    soak = [
        *common,
        "camera.fps=30",
        "sorter.move_s=0",
        "sorter.hold_s=0",
        "sorter.return_s=0",
        "camera.replay.empty_s=0.8",
        "camera.replay.arrive_s=0.1",
        "camera.replay.dwell_s=0.9",
        "camera.replay.remove_s=0.1",
    ]
    await run(soak, args.soak_items, True, mark)
    end = rss_mib()
    report["rss_mib"] = {
        f"after_{warm_items}_items": round(marks["warm"], 1),
        f"after_{args.soak_items}_items": round(end, 1),
        "growth_fraction": round(end / marks["warm"] - 1, 4),
    }
    report["rss_target_growth_max"] = 0.05
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
