"""The daemon serves through the connection guard: its caps hold on the real daemon's socket."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.test_api_guard import closed, read_answer
from tests.test_daemon import bin_config, photo_folder, run_daemon

__all__ = ["run_daemon"]  # the fixture, used by name

HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def test_the_daemon_holds_idle_floods_slow_heads_and_foreign_hosts(
    tmp_path: Path, run_daemon: Any
) -> None:
    config = bin_config(
        tmp_path,
        photo_folder(tmp_path, ["glass"]),
        "http.connections.header_timeout_s=0.5",
        "http.connections.max_per_client=4",
    )
    daemon = await run_daemon(config)
    port = config.http.port
    flood = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
    await asyncio.sleep(0.1)
    assert daemon.connection_guard is not None and daemon.connection_guard.open_connections <= 4

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEALTH)
    status, _, body = await read_answer(reader)
    assert status in (200, 503) and "components" in json.loads(body)
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\n")
    status, _, _ = await read_answer(reader)
    assert status == 408 and await closed(reader)

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: rebound.attacker.example\r\n\r\n")
    status, _, body = await read_answer(reader)
    assert status == 400 and "http.allowed_hosts" in json.loads(body)["error"], "auth is off in this bin"
    for _, flood_writer in flood:
        flood_writer.close()
