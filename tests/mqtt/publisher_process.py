"""A bin's MQTT side in a process of its own, so that tests can kill -9 it.

    python -m tests.mqtt.publisher_process PORT STATE_DIR COUNT [INTERVAL_S]   (from the repository root)

Starts the bridge, submits COUNT generated events (one every INTERVAL_S), printing each id once
`submit_event()` returned (that is, once it is durable), then "submitted", then runs until killed.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from recyclex_edge.config import MqttConfig
from recyclex_edge.health import HealthRegistry
from recyclex_edge.mqtt import MqttBridge
from recyclex_edge.outbox import Outbox
from tests.mqtt.support import make_event

DEVICE_ID = "bin-crash"


def main(port: int, state_dir: Path, count: int, interval_s: float) -> None:
    config = MqttConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "keepalive_s": 5,
            "reconnect": {"min_delay_s": 1, "max_delay_s": 1},
        }
    )
    health = HealthRegistry()
    outbox = Outbox(state_dir / "outbox.sqlite3", max_rows=100_000, max_bytes=64 << 20, health=health)
    bridge = MqttBridge(
        config, DEVICE_ID, outbox, health, commands={}, state_provider=dict, stats_provider=dict
    )
    bridge.start()
    for index in range(count):
        event = make_event(index, device_id=DEVICE_ID)
        bridge.submit_event(event)
        print(event["id"], flush=True)
        time.sleep(interval_s)
    print("submitted", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(
        int(sys.argv[1]),
        Path(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]) if len(sys.argv) > 4 else 0.0,
    )
