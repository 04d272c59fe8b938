"""kill -9 of the real daemon (a process of its own) while it installs a package over HTTP: whenever the
kill lands, the store stays consistent, the previous or the new version is active, and the daemon
starts again and takes the registry back."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from recyclex_edge.config import load_config
from recyclex_edge.registry.store import ModelStore
from tests.mqtt.support import free_port
from tests.registry.support import keypair, package_file

REPO = Path(__file__).resolve().parents[2]
OCTETS = {"Content-Type": "application/octet-stream"}


def write_config(tmp_path: Path, pub: str, port: int) -> Path:
    document = {
        "camera": {"source": "none"},
        "gpio": {"pin_factory": "mock"},
        "mqtt": {"enabled": False},
        "http": {"host": "127.0.0.1", "port": port, "auth": {"enabled": False}},
        "storage": {"state_dir": str(tmp_path / "state")},
        "model": {"trusted_keys": [pub], "keep": 20, "pool_size": 1, "watch": {"period_s": 0}},
    }
    path = tmp_path / "bin.yaml"
    path.write_text(json.dumps(document))
    return path


async def start_daemon(config: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "recyclex_edge", "run", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline_s = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline_s:
            assert process.poll() is None, "the daemon exited"
            try:
                async with session.get(f"http://127.0.0.1:{port}/api/models") as response:
                    if response.status == 200 and (await response.json())["writable"]:
                        return process
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    process.kill()
    raise AssertionError("the daemon did not serve /api/models within 60 s")


async def post(port: int, data: bytes) -> int | None:
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/api/models", data=data, headers=OCTETS) as response,
        ):
            return response.status
    except aiohttp.ClientError:
        return None  # the daemon died under it


async def test_kill_9_of_the_daemon_during_installs(tmp_path: Path) -> None:
    key, pub = keypair(tmp_path / "keys")
    port = free_port()
    config_path = write_config(tmp_path, pub, port)
    store = ModelStore.for_config(load_config(config_path, environ={}), {})
    delays_s: tuple[float | None, ...] = (0.0, 0.01, 0.03, 0.06, 0.1, 0.2, None)  # None: after the answer
    packages = [package_file(tmp_path, f"7.3.{n}", key).read_bytes() for n in range(len(delays_s))]

    daemon = await start_daemon(config_path, port)
    try:
        assert await post(port, package_file(tmp_path, "7.2.0", key).read_bytes()) == 200
        outcomes = []
        for number, delay_s in enumerate(delays_s):
            previous = store.state().active
            upload = asyncio.create_task(post(port, packages[number]))
            if delay_s is None:
                await asyncio.wait_for(asyncio.shield(upload), 60)
            else:
                await asyncio.sleep(delay_s)
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=30)
            status = await upload

            assert store.problems() == [], (delay_s, store.problems())
            active = store.state().active
            assert active in (previous, f"7.3.{number}"), (delay_s, active)
            if status == 200:
                assert active == f"7.3.{number}", "an install that answered 200 is durable"
            outcomes.append(active == f"7.3.{number}")
            daemon = await start_daemon(config_path, port)  # takes the lock back at once
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/api/models") as response,
            ):
                assert (await response.json())["active"] == active
        # The kills landed before the switch (at 0 s at least) and after it (after the answer at least).
        assert outcomes[0] is False and outcomes[-1] is True, outcomes
    finally:
        daemon.kill()
        daemon.wait(timeout=30)
