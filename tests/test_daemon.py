"""The whole bin on replayed items: camera -> detector -> classifier -> decision -> sorter -> events.

Real parts only: the shipped model, real TrashNet photos replayed as deposits, gpiozero's MockFactory
pins read back after each item, a real datagram socket for sd_notify, real signals.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from recyclex_edge.api import EVENTS
from recyclex_edge.classifier import Classifier
from recyclex_edge.config import Config, load_config
from recyclex_edge.daemon import Daemon
from recyclex_edge.decision import UNCERTAIN
from recyclex_edge.errors import RecycleXError
from recyclex_edge.model_card import SHIPPED_MODEL, card_path_for, load_card, sha256_of
from tests.conftest import val_photos
from tests.mqtt.support import free_port

REPO = Path(__file__).resolve().parents[1]
SERVO_PIN = 18
ANGLES = {"cardboard": -75.0, "glass": -45.0, "metal": -15.0, "paper": 15.0, "plastic": 45.0, "trash": 75.0}
JPEG = {"Content-Type": "image/jpeg"}
RELAYS = {"cardboard": 5, "glass": 6, "metal": 13, "paper": 19, "plastic": 26, "trash": 21}


def bin_config(tmp_path: Path, photos: Path, *overrides: str) -> Config:
    settings = [
        f"camera.source=replay:{photos}",
        "camera.fps=30",
        "camera.replay.order=sorted",
        "camera.replay.empty_s=0.6",
        "camera.replay.dwell_s=2.0",
        "gpio.pin_factory=mock",
        f"sorter.servo.pin={SERVO_PIN}",
        "sorter.move_s=0.05",
        "sorter.hold_s=0.1",
        "sorter.return_s=0.05",
        "sorter.residual_bin=trash",
        "mqtt.enabled=false",
        "http.host=127.0.0.1",
        f"http.port={free_port()}",
        "http.auth.enabled=false",
        f"storage.state_dir={tmp_path / 'state'}",
    ]
    for name, angle in ANGLES.items():
        settings += [f"sorter.bins.{name}.angle_deg={angle}", f"sorter.bins.{name}.relay_pin={RELAYS[name]}"]
    return load_config(None, [*settings, *overrides], environ={})


def broker_settings(port: int, device_id: str) -> list[str]:
    """Overrides that connect the bin to a test broker, with a quick reconnect."""
    return [
        "mqtt.enabled=true",
        "mqtt.host=127.0.0.1",
        f"mqtt.port={port}",
        "mqtt.reconnect.min_delay_s=1",
        "mqtt.reconnect.max_delay_s=1",
        f"device.id={device_id}",
    ]


def photo_folder(tmp_path: Path, labels: list[str]) -> Path:
    """Real val photos named so that sorted order is the order given (symlinks: nothing is copied)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, label in enumerate(labels):
        photo = val_photos(label)[2]
        (folder / f"{index:02d}-{label}-{photo.name}").symlink_to(photo)
    return folder


def target_bin(event: dict[str, Any]) -> str:
    return "trash" if event["decision"] == UNCERTAIN else str(event["decision"])


@pytest.fixture
async def run_daemon() -> AsyncIterator[Any]:
    daemons: list[tuple[Daemon, asyncio.Task[None]]] = []

    async def start(config: Config, environ: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(config, environ=environ or {}, paced=True)
        task = asyncio.create_task(daemon.serve())
        daemons.append((daemon, task))
        await asyncio.wait_for(daemon.started.wait(), 60)
        return daemon

    yield start
    for daemon, task in daemons:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)


async def next_events(daemon: Daemon, count: int, timeout_s: float) -> list[dict[str, Any]]:
    assert daemon.app is not None
    events = []
    with daemon.app[EVENTS].subscribe() as subscription:
        async with asyncio.timeout(timeout_s):
            while len(events) < count:
                event, _dropped = await subscription.get()
                events.append(event)
    return events


def servo_duties(daemon: Daemon) -> list[float]:
    return [round(float(state.state), 4) for state in daemon.pin_factory.pin(SERVO_PIN).states]


def relay_levels(daemon: Daemon, pin: int) -> list[float]:
    return [float(state.state) for state in daemon.pin_factory.pin(pin).states]


def duty(angle_deg: float) -> float:
    pulse_ms = 1.0 + (angle_deg + 90) / 180 * 1.0
    return round(pulse_ms / 20.0, 4)


async def test_replayed_items_are_sorted_into_their_bins(
    tmp_path: Path, shipped_classifier: Classifier, run_daemon: Any
) -> None:
    labels = ["glass", "metal", "paper", "cardboard"]
    photos = photo_folder(tmp_path, labels)
    direct = [shipped_classifier.classify(cv2.imread(str(path))) for path in sorted(photos.iterdir())]
    daemon = await run_daemon(bin_config(tmp_path, photos))
    threshold = shipped_classifier.card.decision.threshold

    events = await next_events(daemon, len(labels), timeout_s=90)

    for event, photo_result in zip(events, direct, strict=True):
        # Items arrive in replay order; where the model is sure of the photo, the bin sees the same thing.
        if photo_result.confidence >= 0.9:
            assert event["class"] == photo_result.label
        assert event["decision"] == (event["class"] if event["confidence"] >= threshold else UNCERTAIN)
    for event in events:
        target = target_bin(event)
        assert event["action"] == f"sorted:{target}"
        assert event["device"] == daemon.config.device.id and len(event["id"]) == 26
        assert event["timing"]["frames"] == daemon.config.decision.burst_frames
        assert event["timing"]["decided_to_actuated_ms"] is not None
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    # Each item: the servo went to its bin's angle, then home, then was detached.
    duties = servo_duties(daemon)
    for event in events:
        assert duty(ANGLES[target_bin(event)]) in duties
    assert duties[-1] == 0.0, "the servo must be detached when idle"
    # Each flap opened once per item sent to it, and is closed now.
    for name, pin in RELAYS.items():
        sent_here = sum(
            1 for e in events if (e["decision"] if e["decision"] != UNCERTAIN else "trash") == name
        )
        assert relay_levels(daemon, pin).count(1.0) >= sent_here
        assert relay_levels(daemon, pin)[-1] == 0.0


async def test_uncertain_items_go_to_the_residual_bin(tmp_path: Path, run_daemon: Any) -> None:
    photos = photo_folder(tmp_path, ["plastic", "glass"])
    # A threshold no real photo reaches: every item is uncertain.
    daemon = await run_daemon(bin_config(tmp_path, photos, "decision.threshold=0.999999"))
    events = await next_events(daemon, 2, timeout_s=60)
    assert [e["decision"] for e in events] == [UNCERTAIN, UNCERTAIN]
    assert [e["action"] for e in events] == ["sorted:trash", "sorted:trash"]
    assert relay_levels(daemon, RELAYS["trash"]).count(1.0) >= 2
    assert relay_levels(daemon, RELAYS["plastic"]) == [0.0]


async def test_sigterm_mid_sort_ends_with_flaps_closed_and_diverter_home(
    tmp_path: Path, run_daemon: Any
) -> None:
    photos = photo_folder(tmp_path, ["metal"])
    config = bin_config(tmp_path, photos, "sorter.hold_s=20")  # a hold far longer than the test
    daemon = await run_daemon(config)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.request_stop)
    try:
        async with asyncio.timeout(60):
            while 1.0 not in [level for pin in RELAYS.values() for level in relay_levels(daemon, pin)]:
                await asyncio.sleep(0.02)
        started = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)  # mid-sort: a flap is open right now
        await asyncio.wait_for(daemon.stopped.wait(), 15)
        assert time.monotonic() - started < 10, "stop must not wait for the 20 s hold"
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    assert all(relay_levels(daemon, pin)[-1] == 0.0 for pin in RELAYS.values()), "every flap closed"
    duties = servo_duties(daemon)
    assert duties[-2:] == [duty(0.0), 0.0], "diverter home, then detached"


async def test_sd_notify_ready_watchdog_and_stopping(tmp_path: Path, run_daemon: Any) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.setblocking(False)
    photos = photo_folder(tmp_path, ["paper"])
    environ = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    daemon = await run_daemon(bin_config(tmp_path, photos), environ)

    messages: list[str] = []

    async def receive_until(pattern: str, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not any(re.search(pattern, m) for m in messages):
                try:
                    messages.append(listener.recv(4096).decode())
                except BlockingIOError:
                    await asyncio.sleep(0.05)

    await receive_until(r"^READY=1", 30)
    await receive_until(r"^WATCHDOG=1", 10)
    ready = next(m for m in messages if m.startswith("READY=1"))
    assert "STATUS=" in ready

    # Wedge the inference loop: the watchdog must stop being petted (a timer alone is no watchdog).
    daemon.liveness.max_silence_s = 1.0
    assert daemon.pipeline is not None
    daemon.pipeline.stop()
    await asyncio.sleep(2.0)  # longer than max_silence_s: from now on nothing may pet the watchdog

    def drain() -> list[str]:
        received = []
        while True:
            try:
                received.append(listener.recv(4096).decode())
            except BlockingIOError:
                return received

    drain()
    await asyncio.sleep(2.0)  # two watchdog intervals
    messages = drain()
    assert not any(m.startswith("WATCHDOG=1") for m in messages), messages

    daemon.request_stop()
    await receive_until(r"^STOPPING=1", 30)
    listener.close()


async def test_a_model_that_fails_to_load_leaves_the_bin_serving_health(
    tmp_path: Path, run_daemon: Any
) -> None:
    import aiohttp

    photos = photo_folder(tmp_path, ["paper"])
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a model")
    config = bin_config(tmp_path, photos, f"model.path={broken}")
    daemon = await run_daemon(config)
    assert daemon.pipeline is None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{config.http.port}/health") as response,
    ):
        body = await response.json()
    assert response.status == 503
    assert body["components"]["classifier"]["status"] == "failing"
    assert "card" in body["components"]["classifier"]["detail"]
    assert body["components"]["sorter"]["status"] == "ok", "the flaps were still put in their safe state"


async def test_reload_model_after_a_failed_start_starts_sorting_without_a_restart(
    tmp_path: Path, run_daemon: Any
) -> None:
    import aiohttp

    photos = photo_folder(tmp_path, ["paper"])
    model = tmp_path / "model" / SHIPPED_MODEL.name
    model.parent.mkdir()
    model.write_bytes(b"a botched copy")
    shutil.copy(card_path_for(SHIPPED_MODEL), card_path_for(model))
    config = bin_config(tmp_path, photos, f"model.path={model}")
    daemon = await run_daemon(config)
    base = f"http://127.0.0.1:{config.http.port}"
    photo = val_photos("glass")[0].read_bytes()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/predict/image", data=photo, headers=JPEG) as response:
            assert response.status == 503 and "not loaded" in (await response.json())["error"]
        with pytest.raises(RecycleXError, match="does not match its card"):
            await asyncio.to_thread(daemon._command_reload_model, {})
        assert daemon.pipeline is None and daemon.classifier is None

        shutil.copy(SHIPPED_MODEL, model)  # the technician fixes the file
        answer = await asyncio.to_thread(daemon._command_reload_model, {})
        shipped = load_card(SHIPPED_MODEL)
        assert answer["model"]["name"] == shipped.name
        assert daemon.pipeline is not None, "the sorting pipeline starts with the model"
        events = await next_events(daemon, 1, timeout_s=60)
        assert events[0]["model"]["name"] == shipped.name
        async with session.get(f"{base}/health") as response:
            health = await response.json()
        classifier = health["components"]["classifier"]
        assert classifier["status"] == "ok" and "failed at start-up" in classifier["detail"]
        assert health["model"]["sha256"] == sha256_of(model)
        async with session.post(f"{base}/predict/image", data=photo, headers=JPEG) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["class"] == "glass"
        async with session.get(f"{base}/metrics") as response:
            assert f'sha256="{sha256_of(model)}"' in await response.text()


def test_tools_demo_runs_the_daemon_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`tools/demo PHOTO_FOLDER` runs the real daemon on replayed items; SIGTERM ends it with status 0,
    as systemd's stop would, well within TimeoutStopSec."""
    photos = photo_folder(tmp_path, ["glass"])
    process = subprocess.Popen(
        [
            str(REPO / "tools" / "demo"),
            str(photos),
            "--set",
            f"http.port={free_port()}",
            "--set",
            f"storage.state_dir={tmp_path / 'state'}",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180  # tools/demo may have to install the package first
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if re.search(r"item \w{26}: ", line):
            break
    try:
        assert any(re.search(r"item \w{26}: \w+ [0-9.]+ -> \w+, sorted:\w+", line) for line in lines), (
            "".join(lines)
        )
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, rest
    assert time.monotonic() - started < 20
    assert "stopped" in rest
