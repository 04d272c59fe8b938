"""Soak: a steady stream of events through repeated broker restarts. Run with `pytest -m soak`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from tests.mqtt.support import Bin, Collector, Mosquitto, make_event, mqtt_config, submit, wait_until

PREFIX = "recyclex/bin-test"


@pytest.mark.soak
def test_events_survive_repeated_broker_restarts(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin]
) -> None:
    dashboard = collector(broker, [f"{PREFIX}/events"])
    bin_ = make_bin(mqtt_config(broker.port))
    produced: list[str] = []
    done = threading.Event()

    def produce() -> None:
        for index in range(1500):
            produced.append(submit(bin_.bridge, make_event(index)))
            time.sleep(0.002)  # pacing, not waiting: a busy bin makes an event every few milliseconds
        done.set()

    producer = threading.Thread(target=produce, name="soak-producer")
    producer.start()
    for restart in range(1, 4):
        target = restart * 400
        wait_until(lambda target=target: len(produced) >= target, "more events before the next restart", 120)
        broker.restart()
    producer.join(300)
    assert done.is_set()

    def delivered() -> list[str]:
        seen: dict[str, None] = {}
        for message in dashboard.on(f"{PREFIX}/events"):
            seen.setdefault(message.json()["id"], None)
        return list(seen)

    wait_until(lambda: len(delivered()) >= len(produced), "every event", 300)
    assert delivered() == produced
    wait_until(lambda: bin_.outbox.depth == 0, "the outbox to empty", 120)
    assert bin_.outbox.lost == 0
