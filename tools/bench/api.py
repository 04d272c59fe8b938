"""Benchmark POST /predict/image against in-process decode+classify; prints one JSON document.

    .venv/bin/python tools/bench/api.py [--requests 800] [--rss-requests 10000] [--model PATH]

The daemon runs as it does on a bin (`recyclex-edge run`, the shipped model, the default pool of 2
interpreters x 1 thread, authentication on with a static token, the cache on) in a subprocess on
127.0.0.1, with no camera, MQTT off and mock GPIO; the rate limit is off, as the issue allows for a
bench. Every upload is a real TrashNet JPEG with a request counter appended after its end-of-image
marker, so no two uploads hash alike: every request misses the cache and really runs the model, while the
cache still fills and evicts as it would.

The in-process baseline decodes and classifies the same bytes with the same model, pool size and thread
count, in a ThreadPoolExecutor of the same size. The two sides alternate request by request at
concurrency 1 and in blocks of 40 at concurrency 4, so load from other processes on a shared machine,
which drifts during a run, falls on both alike.

`worker_process_cpu_ms_per_request` is the CPU the serving process spends per request: this process for
the in-process side, the daemon for the HTTP side (so the benchmark's own HTTP client, which on a bin
runs on the technician's laptop, is not counted). Their difference is what HTTP costs the bin.

Targets (issue 4): HTTP throughput at concurrency 4 >= 0.85 x in-process; HTTP p50 at concurrency 1
within 3 ms of in-process p50; the server's RSS grows by at most 5% over 10,000 requests after warm-up.
Target (issue 16): the daemon's peak RSS (VmHWM) over the whole run, concurrency 4 included, <= 128 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
from support import free_port, rss_mib

from recyclex_edge.classifier import Classifier
from recyclex_edge.imaging import decode_image

REPO = Path(__file__).resolve().parents[2]
POOL_SIZE = 2  # the config defaults: model.pool_size=2, model.num_threads=1
NUM_THREADS = 1


def unique(photos: list[bytes], index: int) -> bytes:
    """A real photo made unique by bytes after its end-of-image marker (decoders ignore them)."""
    return photos[index % len(photos)] + index.to_bytes(8, "big")


Run = tuple[list[float], float]  # per-request latencies (ms), elapsed wall time (s)


def latency_summary(samples_ms: list[float], elapsed_s: float) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "requests": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3),
        "throughput_rps": round(len(ordered) / elapsed_s, 2),
    }


class InProcess:
    """decode_image + classify in a pool the size of the daemon's, on the same model."""

    def __init__(self, photos: list[bytes], model: Path | None) -> None:
        self.photos = photos
        self.classifier = Classifier(model, num_threads=NUM_THREADS, pool_size=POOL_SIZE)
        self.executor = ThreadPoolExecutor(max_workers=POOL_SIZE)

    def _job(self, data: bytes) -> str:
        return self.classifier.classify(decode_image(data)).label

    def cpu_s(self) -> float:
        """CPU time of the process doing the work (this one)."""
        return time.process_time()

    async def run(self, requests: int, concurrency: int, offset: int) -> Run:
        loop = asyncio.get_running_loop()
        samples: list[float] = []
        counter = iter(range(offset, offset + requests))

        async def worker() -> None:
            for index in counter:
                started = time.perf_counter()
                await loop.run_in_executor(self.executor, self._job, unique(self.photos, index))
                samples.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - started


class OverHttp:
    """POST /predict/image over one keep-alive connection per concurrent client."""

    def __init__(
        self, photos: list[bytes], url: str, token: str, session: aiohttp.ClientSession, daemon_pid: int
    ) -> None:
        self.photos = photos
        self.daemon_pid = daemon_pid
        self.url = f"{url}/predict/image"
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
        self.session = session

    def cpu_s(self) -> float:
        """CPU time of the process doing the work: the daemon, not this benchmark's HTTP client."""
        fields = Path(f"/proc/{self.daemon_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def run(self, requests: int, concurrency: int, offset: int) -> Run:
        samples: list[float] = []
        counter = iter(range(offset, offset + requests))

        async def worker() -> None:
            for index in counter:
                started = time.perf_counter()
                data = unique(self.photos, index)
                async with self.session.post(self.url, data=data, headers=self.headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
                samples.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - started


async def interleaved(
    sides: dict[str, InProcess | OverHttp], requests: int, concurrency: int, block: int, offset: int
) -> dict[str, dict[str, float]]:
    """Both sides in alternating blocks of `block` requests (the order flips every block), so load
    from other processes that drifts during the run falls on both alike."""
    samples: dict[str, list[float]] = {name: [] for name in sides}
    elapsed_s = dict.fromkeys(sides, 0.0)
    cpu_s = dict.fromkeys(sides, 0.0)
    order = list(sides)
    for _ in range(0, requests, block):
        for name in order:
            cpu_before = sides[name].cpu_s()
            latencies, seconds = await sides[name].run(block, concurrency, offset)
            cpu_s[name] += sides[name].cpu_s() - cpu_before
            offset += block
            samples[name] += latencies
            elapsed_s[name] += seconds
        order.reverse()
    return {
        name: {
            **latency_summary(samples[name], elapsed_s[name]),
            "worker_process_cpu_ms_per_request": round(cpu_s[name] * 1000 / len(samples[name]), 3),
        }
        for name in sides
    }


def start_daemon(state_dir: Path, port: int, token: str, model: Path | None) -> subprocess.Popen[bytes]:
    digest = hashlib.sha256(token.encode()).hexdigest()
    overrides = [
        "http.host=127.0.0.1",
        f"http.port={port}",
        "http.rate_limit.enabled=false",
        f"http.auth.tokens=[{{name: bench, sha256: {digest}, scopes: [predict]}}]",
        f"model.pool_size={POOL_SIZE}",
        f"model.num_threads={NUM_THREADS}",
        f"storage.state_dir={state_dir}",
        "mqtt.enabled=false",
        "gpio.pin_factory=mock",
        "logging.level=INFO",  # the access log is written, as on a bin
    ]
    if model is not None:
        overrides.append(f"model.path={model.resolve()}")
    command = [sys.executable, "-m", "recyclex_edge", "run"]
    for override in overrides:
        command += ["--set", override]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {process.returncode}")
            try:
                async with session.get(f"{url}/health") as response:
                    # 503 is fine: with no camera on a bench the bin as a whole is 'failing'.
                    body = await response.json()
                    if body["components"].get("classifier", {}).get("status") == "ok":
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the daemon's classifier did not come up in time")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    photos = [path.read_bytes() for path in sorted(args.photos.rglob("*.jpg"))]
    if not photos:
        raise SystemExit(f"no JPEGs under {args.photos}")
    token = secrets.token_urlsafe(32)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="recyclex-bench-") as state_dir:
        daemon = start_daemon(Path(state_dir), port, token, args.model)
        try:
            await wait_ready(url, daemon)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as session:
                in_process = InProcess(photos, args.model)
                sides: dict[str, InProcess | OverHttp] = {
                    "in_process": in_process,
                    "http": OverHttp(photos, url, token, session, daemon.pid),
                }
                offset = 0
                # Warm-up: interpreters, connections, allocator, the cache filled to its bound.
                for side in sides.values():
                    await side.run(args.warmup, 4, offset)
                    offset += args.warmup
                c1 = await interleaved(sides, args.requests, 1, 1, offset)
                offset += 2 * args.requests
                c4 = await interleaved(sides, args.requests, 4, 40, offset)
                offset += 2 * args.requests
                rss_before = rss_mib(daemon.pid)
                soak_samples, soak_s = await sides["http"].run(args.rss_requests, 4, offset)
                rss_after = rss_mib(daemon.pid)
                rss_peak = rss_mib(daemon.pid, "VmHWM")
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    card = in_process.classifier.card
    throughput_ratio = c4["http"]["throughput_rps"] / c4["in_process"]["throughput_rps"]
    p50_delta_ms = c1["http"]["p50_ms"] - c1["in_process"]["p50_ms"]
    rss_growth_pct = (rss_after - rss_before) / rss_before * 100
    return {
        "model": {"name": card.name, "version": card.version, "sha256": card.sha256},
        "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "setup": {
            "pool_size": POOL_SIZE,
            "num_threads": NUM_THREADS,
            "requests_per_side_and_concurrency": args.requests,
            "photos": len(photos),
            "http": "recyclex-edge run, auth on (static token), cache on (all misses), rate limit off",
        },
        "concurrency_1": c1,
        "concurrency_4": c4,
        "summary": {
            "p50_c1_delta_ms": round(p50_delta_ms, 3),
            "throughput_c4_ratio": round(throughput_ratio, 3),
        },
        "rss": {
            "requests": args.rss_requests,
            "after_warmup_mib": round(rss_before, 1),
            "after_requests_mib": round(rss_after, 1),
            "growth_pct": round(rss_growth_pct, 2),
            "peak_mib": round(rss_peak, 1),
            "soak": latency_summary(soak_samples, soak_s),
        },
        "targets": {
            "throughput_c4_ratio_at_least_0.85": throughput_ratio >= 0.85,
            "p50_c1_delta_at_most_3ms": p50_delta_ms <= 3.0,
            "rss_growth_at_most_5pct": rss_growth_pct <= 5.0,
            "peak_rss_at_most_128mib": rss_peak <= 128.0,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=800, help="requests per side and concurrency")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests, each side")
    parser.add_argument("--rss-requests", type=int, default=10_000, help="requests between the RSS readings")
    parser.add_argument("--model", type=Path, default=None, help="a .tflite with its card (default: shipped)")
    parser.add_argument(
        "--photos", type=Path, default=REPO.parent / "shared" / "datasets" / "trashnet" / "val"
    )
    print(json.dumps(asyncio.run(bench(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
