"""Benchmark of the durable event outbox; prints one JSON document.

    .venv/bin/python tools/bench/outbox.py [--events N] [--max-inflight N]

- write latency: what `MqttBridge.submit_event()` adds per event (serialise + one SQLite WAL commit with
  synchronous=FULL), measured on an outbox in a temporary directory, p50/p99 in microseconds. Run it on
  the target's SD card for real numbers: the fsync dominates and depends on the storage.
- drain rate: N events queued while nothing was connected, then the bridge started against a local
  Mosquitto (started here on a free loopback port); events per second from the connection until the
  outbox is empty, i.e. until the broker acknowledged every one (QoS 1). A subscriber counts what arrived.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from support import free_port

from recyclex_edge.config import MqttConfig
from recyclex_edge.health import HealthRegistry
from recyclex_edge.mqtt import MqttBridge
from recyclex_edge.outbox import Outbox

DEVICE_ID = "bench"
TIMEOUT_S = 120.0


def start_broker(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    config = workdir / "mosquitto.conf"
    # max_queued_messages 0: the counting subscriber must not lose messages if it lags behind.
    config.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
    )
    broker = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return broker
        except OSError:
            if broker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("mosquitto did not start") from None
            time.sleep(0.05)


def event(index: int) -> dict[str, Any]:
    labels = ("cardboard", "glass", "metal", "paper", "plastic", "trash")
    label = labels[index % len(labels)]
    return {
        "class": label,
        "confidence": 0.87,
        "probabilities": {name: (0.87 if name == label else 0.026) for name in labels},
        "decision": label,
        "action": f"sorted:{label}",
        "model": {"name": "trashnet-lite0-int8", "version": "1.0.0"},
        "timing": {"detect_to_decided_ms": 48.1, "decided_to_actuated_ms": 3.4},
    }


def percentile_us(samples_s: list[float], fraction: float) -> float:
    ordered = sorted(samples_s)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1e6, 1)


def wait(condition: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="events per measurement")
    parser.add_argument("--max-inflight", type=int, default=20, help="mqtt.max_inflight")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        broker = start_broker(workdir, port)
        try:
            config = MqttConfig.model_validate(
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "max_inflight": args.max_inflight,
                    "discovery": {"enabled": False},
                }
            )
            health = HealthRegistry()
            outbox = Outbox(workdir / "outbox.sqlite3", max_rows=1_000_000, max_bytes=1 << 30, health=health)
            bridge = MqttBridge(
                config, DEVICE_ID, outbox, health, commands={}, state_provider=dict, stats_provider=dict
            )

            # 1. Write latency, with nothing draining (the common case: one event every few seconds).
            samples_s = []
            for index in range(args.events):
                started = time.perf_counter()
                bridge.submit_event(event(index))
                samples_s.append(time.perf_counter() - started)
            payload_bytes = outbox.size_bytes // outbox.depth

            # 2. Drain of the backlog to a local broker, counted by a subscriber as well.
            received = 0
            lock = threading.Lock()

            def on_message(*_: Any) -> None:
                nonlocal received
                with lock:
                    received += 1

            subscribed = threading.Event()
            subscriber = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
            subscriber.on_message = on_message
            subscriber.on_subscribe = lambda *_: subscribed.set()
            subscriber.connect("127.0.0.1", port)
            subscriber.subscribe(f"recyclex/{DEVICE_ID}/events", qos=1)
            subscriber.loop_start()
            wait(subscribed.is_set, "the subscription")

            bridge.start()
            try:
                wait(lambda: bridge.connected, "the bridge to connect")
                started = time.perf_counter()
                wait(lambda: outbox.depth == 0, "the outbox to drain")
                drain_s = time.perf_counter() - started
                wait(lambda: received >= args.events, "the subscriber to receive every event")
            finally:
                bridge.stop()
                subscriber.disconnect()
                subscriber.loop_stop()
                outbox.close()
        finally:
            broker.terminate()
            broker.wait()

    print(
        json.dumps(
            {
                "events": args.events,
                "payload_bytes": payload_bytes,
                "max_inflight": args.max_inflight,
                "sqlite": {"journal_mode": "wal", "synchronous": "full"},
                "write_latency_us": {
                    "p50": percentile_us(samples_s, 0.50),
                    "p99": percentile_us(samples_s, 0.99),
                    "mean": round(statistics.fmean(samples_s) * 1e6, 1),
                    "max": round(max(samples_s) * 1e6, 1),
                },
                "drain": {
                    "events_per_s": round(args.events / drain_s, 1),
                    "seconds": round(drain_s, 3),
                    "received_by_subscriber": received,
                },
                "machine": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0))},
            },
            indent=2,
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
