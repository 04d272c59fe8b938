"""Attack a real daemon on loopback the way issue 18 did; prints one JSON document.

    .venv/bin/python tools/bench/attack.py [--seconds 15]

The daemon runs as its own process (`recyclex-edge run` on config/demo.yaml, replaying val photos with
mock GPIO, so it sorts items throughout) with authentication on, the default caps, and 1024 open files
as the unit's LimitNOFILE gives it. One attack at a time, each bounded in time and in connections:

1. heads:     400 connections from 40 addresses (127.0.0.2-41) sending 100 headers of 8 kB, never
              finishing, reconnecting when closed;
2. idle:      1,100 idle connections from one address (127.0.0.1), reopened when closed;
3. bomb:      8 PNG inflate bombs at once (100x100 header over ~2 GiB of zeros), predict token;
4. multipart: 10 uploads of 100k empty multipart parts at once, predict token;
5. log:       a forged access line (`/x%0a<fake line>`), then 5,000 requests with 8 kB paths.

During each: daemon RSS (before, peak, after), /health latency from 127.0.0.1 (a fresh connection
every 0.5 s; 5 s without an answer counts as 5 s and a failure), and items the bin sorted (its event
feed over /predict/live). Only loopback addresses are ever connected to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from support import free_port, rss_mib

REPO = Path(__file__).resolve().parents[2]
VAL = REPO.parent / "shared" / "datasets" / "trashnet" / "val"
TOKENS = {name: f"bench-{name}-token-{'x' * 24}" for name in ("watcher", "bomber", "parts")}
FORGED = "2026-01-01 00:00:00,000 INFO recyclex_edge.api.access: method=POST path=/api/commands/reset"
PROBE_TIMEOUT_S = 5.0


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def inflate_bomb(inflated_bytes: int) -> bytes:
    step = 1 << 20
    compressor = zlib.compressobj(9)
    first = compressor.compress(b"\0" * step) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(b"\0" * step) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = first + repeated * (inflated_bytes // step - 1) + compressor.flush()
    header = struct.pack(">IIBBBBB", 100, 100, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", stream)
        + png_chunk(b"IEND", b"")
    )


class Target:
    def __init__(self, port: int, pid: int) -> None:
        self.port = port
        self.pid = pid

    async def connect(self, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))

    async def request(
        self, raw: bytes, source: str = "127.0.0.1", timeout_s: float = 30.0
    ) -> tuple[int, float]:
        """Send one raw request on a fresh connection; (status or 0 on failure, seconds)."""
        started = time.perf_counter()
        writer = None
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await self.connect(source)
                writer.write(raw)
                status_line = await reader.readline()
                status = int(status_line.split()[1]) if status_line else 0
        except (OSError, TimeoutError, ValueError, IndexError):
            status = 0
        finally:
            if writer is not None:
                writer.close()
        return status, time.perf_counter() - started


async def watch(target: Target, stop: asyncio.Event) -> dict[str, Any]:
    """RSS every 0.1 s and a /health probe every 0.5 s until `stop`."""
    rss: list[float] = []
    latencies: list[float] = []
    statuses: list[int] = []

    async def sample_rss() -> None:
        while not stop.is_set():
            rss.append(rss_mib(target.pid))
            await asyncio.sleep(0.1)

    async def probe() -> None:
        while not stop.is_set():
            status, seconds = await target.request(
                b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                timeout_s=PROBE_TIMEOUT_S,
            )
            statuses.append(status)
            latencies.append(seconds)
            await asyncio.sleep(max(0.0, 0.5 - seconds))

    await asyncio.gather(sample_rss(), probe())
    return {"rss": rss, "latencies": latencies, "statuses": statuses}


async def count_items(port: int, counter: list[int], ready: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {TOKENS['watcher']}"}
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.250", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.ws_connect(f"http://127.0.0.1:{port}/predict/live", headers=headers) as ws,
    ):
        await ws.send_json({"subscribe": "events"})
        await ws.receive_json()
        ready.set()
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT and "event" in json.loads(message.data):
                counter[0] += 1


async def heads_attack(target: Target, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    answers: dict[str, int] = {}
    header = b"X-Filler: " + b"h" * 8000 + b"\r\n"

    async def worker(source: str) -> None:
        while time.monotonic() < deadline:
            writer = None
            key = "unanswered"
            try:
                reader, writer = await target.connect(source)
                writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                for _ in range(100):
                    writer.write(header)
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        line = await asyncio.wait_for(reader.readline(), 0.1)
                        key = line.split()[1].decode() if line else "closed"
                        break
                    if time.monotonic() >= deadline:
                        break
            except (OSError, IndexError):
                key = "closed"
            finally:
                if writer is not None:
                    writer.close()
            answers[key] = answers.get(key, 0) + 1
            await asyncio.sleep(0.5)  # then again, bounded: at most 2 connections a second per worker

    await asyncio.gather(*(worker(f"127.0.0.{2 + index % 40}") for index in range(400)))
    return {"connections": 400, "addresses": 40, "answers": answers}


async def idle_attack(target: Target, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    connections = []
    refused = 0
    for _ in range(1100):
        try:
            connections.append(await target.connect())
        except OSError:
            refused += 1
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    async def closed(reader: asyncio.StreamReader) -> bool:
        try:
            async with asyncio.timeout(0.5):
                while await reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except OSError:
            return True
        return True

    closed_by_server = sum(await asyncio.gather(*(closed(reader) for reader, _ in connections)))
    for _, writer in connections:
        writer.close()
    return {"connections": 1100, "refused_at_connect": refused, "closed_by_server": closed_by_server}


async def bomb_attack(target: Target, seconds: float) -> dict[str, Any]:
    bomb = inflate_bomb(2 << 30)
    head = (
        f"POST /predict/image HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKENS['bomber']}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(bomb)}\r\nConnection: close\r\n\r\n"
    ).encode()
    results = await asyncio.gather(*(target.request(head + bomb, "127.0.0.60") for _ in range(8)))
    return {
        "bomb_bytes": len(bomb),
        "declared": "100x100",
        "inflates_to_bytes": 2 << 30,
        "statuses": sorted(status for status, _ in results),
        "answer_s_max": round(max(s for _, s in results), 3),
    }


async def multipart_attack(target: Target, seconds: float) -> dict[str, Any]:
    boundary = "b0undary"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n'.encode()
    body = part * 100_000 + f"--{boundary}--\r\n".encode()
    head = (
        f"POST /predict/image HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKENS['parts']}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    results = await asyncio.gather(*(target.request(head + body, "127.0.0.61") for _ in range(10)))
    return {
        "parts": 100_000,
        "body_bytes": len(body),
        "statuses": sorted(status for status, _ in results),
        "answer_s_max": round(max(s for _, s in results), 3),
    }


def log_attack(log_path: Path) -> Callable[[Target, float], Awaitable[dict[str, Any]]]:
    async def attack(target: Target, seconds: float) -> dict[str, Any]:
        size_before = log_path.stat().st_size
        forged_path = "/x%0a" + FORGED.replace(" ", "%20")
        await target.request(f"GET {forged_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(), "127.0.0.70")
        long_path = "/" + "p" * 8000
        statuses: dict[int, int] = {}
        semaphore = asyncio.Semaphore(50)

        async def one(index: int) -> None:
            async with semaphore:
                status, _ = await target.request(
                    f"GET {long_path}{index} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
                    f"127.0.0.{71 + index % 20}",
                )
                statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(one(index) for index in range(5000)))
        elapsed = time.perf_counter() - started
        await asyncio.sleep(1.0)
        text = log_path.read_text(errors="replace")
        return {
            "requests": 5000,
            "path_bytes": 8000,
            "seconds": round(elapsed, 2),
            "statuses": statuses,
            "log_bytes_written": log_path.stat().st_size - size_before,
            "forged_line_present": any(line.startswith(FORGED) for line in text.splitlines()),
        }

    return attack


def summarise(watched: dict[str, Any], items: int, before: float, after: float) -> dict[str, Any]:
    latencies = watched["latencies"] or [float("nan")]
    return {
        "rss_mib": {
            "before": round(before, 1),
            "peak": round(max([*watched["rss"], after]), 1),
            "after": round(after, 1),
        },
        "health_ms": {
            "probes": len(latencies),
            "p50": round(statistics.median(latencies) * 1000, 1),
            "max": round(max(latencies) * 1000, 1),
            "within_2s": sum(1 for s in latencies if s <= 2.0),
            "failed": sum(1 for status in watched["statuses"] if status not in (200, 503)),
        },
        "items_sorted": items,
    }


async def run_attacks(seconds: float, only: list[str]) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the attacker needs 1,100+ sockets
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="recyclex-attack-"))
    log_path = state / "daemon.log"
    tokens = ", ".join(
        f"{{name: {name}, sha256: {hashlib.sha256(token.encode()).hexdigest()}, scopes: [predict]}}"
        for name, token in TOKENS.items()
    )
    overrides = [
        f"camera.source=replay:{VAL}",
        "camera.replay.order=shuffled",
        "camera.replay.empty_s=0.8",
        "camera.replay.dwell_s=1.6",
        f"http.port={port}",
        "http.host=127.0.0.1",
        "http.auth.enabled=true",
        f"http.auth.tokens=[{tokens}]",
        f"storage.state_dir={state}",
    ]
    command = [
        str(Path(sys.executable).with_name("recyclex-edge")),
        "run",
        "--config",
        str(REPO / "config" / "demo.yaml"),
    ]
    for override in overrides:
        command += ["--set", override]

    def unit_limits() -> None:  # LimitNOFILE=1024, as the unit sets it
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    with log_path.open("wb") as log_file:
        daemon = subprocess.Popen(command, stderr=log_file, stdout=log_file, preexec_fn=unit_limits, cwd=REPO)
    target = Target(port, daemon.pid)
    report: dict[str, Any] = {"seconds_per_attack": seconds, "file_limit": 1024}
    try:
        for _ in range(300):
            status, _ = await target.request(
                b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout_s=1.0
            )
            if status:
                break
            await asyncio.sleep(0.2)
        items = [0]
        ready = asyncio.Event()
        counter = asyncio.create_task(count_items(port, items, ready))
        await asyncio.wait_for(ready.wait(), 60)
        await asyncio.sleep(3.0)
        report["rss_mib_idle"] = round(rss_mib(daemon.pid), 1)
        attacks: dict[str, Callable[[Target, float], Awaitable[dict[str, Any]]]] = {
            "heads": heads_attack,
            "idle": idle_attack,
            "bomb": bomb_attack,
            "multipart": multipart_attack,
            "log": log_attack(log_path),
        }
        for name, attack in attacks.items():
            if only and name not in only:
                continue
            print(f"attack: {name}", file=sys.stderr, flush=True)
            before = rss_mib(daemon.pid)
            items_before = items[0]
            stop = asyncio.Event()
            watcher = asyncio.create_task(watch(target, stop))
            result = await attack(target, seconds)
            stop.set()
            watched = await watcher
            await asyncio.sleep(3.0)
            after = rss_mib(daemon.pid)
            report[name] = {**result, **summarise(watched, items[0] - items_before, before, after)}
        counter.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await counter
        report["daemon_alive"] = daemon.poll() is None
        report["log_bytes_total"] = log_path.stat().st_size
    finally:
        daemon.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(30)
        if daemon.poll() is None:
            daemon.kill()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the heads and idle attacks")
    parser.add_argument("--only", nargs="*", default=[], help="heads, idle, bomb, multipart, log")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run_attacks(args.seconds, args.only)), indent=2))


if __name__ == "__main__":
    main()
