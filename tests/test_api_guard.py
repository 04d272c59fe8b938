"""The connection guard on a real listening socket: caps on connections, request heads and their time.

Every test starts the API as the daemon does (AppRunner + GuardedSite on 127.0.0.1, port 0) and talks
to it over real sockets, most of them raw, because the attacks are below what an HTTP client sends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web

from recyclex_edge.api import build_app
from recyclex_edge.api.guard import ConnectionGuard, GuardedSite, handler_options
from recyclex_edge.health import HealthRegistry
from tests.conftest import API_PREDICT_TOKEN

HEALTH_REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@dataclass
class Served:
    port: int
    guard: ConnectionGuard

    async def connect(self, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))


async def read_answer(
    reader: asyncio.StreamReader, timeout_s: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length body: (status, headers, body)."""
    async with asyncio.timeout(timeout_s):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def closed(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bool:
    """True once the server closed the connection (EOF or reset), reading and dropping what is left."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.fixture
async def serve(api_config) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    runners: list[web.AppRunner] = []

    async def start(*overrides: str, classifier: object = None) -> Served:
        config = api_config(*overrides)
        app = build_app(config, classifier, HealthRegistry())  # type: ignore[arg-type]
        options = handler_options(config.http)
        runner = web.AppRunner(app, **options)
        await runner.setup()
        runners.append(runner)
        guard = ConnectionGuard(config.http.connections)
        site = GuardedSite(runner, "127.0.0.1", 0, guard, options)
        await site.start()
        return Served(site.bound_port, guard)

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_a_new_connection_displaces_the_longest_idle_one_of_its_address(serve) -> None:
    served = await serve("http.connections.max_per_client=4")
    idle = [await served.connect() for _ in range(4)]
    await asyncio.sleep(0.1)
    assert served.guard.connections_of("127.0.0.1") == 4

    reader, writer = await served.connect()
    writer.write(HEALTH_REQUEST)
    status, _headers, body = await read_answer(reader)
    assert status in (200, 503) and "status" in json.loads(body), "the probe is answered"
    assert await closed(idle[0][0], 2.0), "the longest-idle connection made room"
    for other_reader, _ in idle[1:]:
        assert not await closed(other_reader, 0.05)
    assert served.guard.connections_of("127.0.0.1") == 4
    assert served.guard.refused["evicted_per_client"] == 1


async def test_idle_flood_from_one_address_never_exceeds_the_cap_and_probes_get_through(serve) -> None:
    served = await serve("http.connections.max_per_client=16", "http.connections.max_total=32")
    flood = []
    for _ in range(200):
        flood.append(await served.connect())
    await asyncio.sleep(0.1)
    assert served.guard.open_connections <= 16
    for _ in range(5):
        reader, writer = await served.connect()
        writer.write(HEALTH_REQUEST)
        status, _, _ = await read_answer(reader, timeout_s=2.0)
        assert status in (200, 503)
        writer.close()
    for _, writer in flood:
        writer.close()


async def test_busy_connections_are_not_displaced_and_the_extra_one_gets_429(
    serve, shipped_classifier
) -> None:
    served = await serve("http.connections.max_per_client=2", classifier=shipped_classifier)
    uploads = []
    for _ in range(2):  # heads complete, bodies trickling: requests in progress
        reader, writer = await served.connect()
        writer.write(
            b"POST /predict/image HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Authorization: Bearer "
            + API_PREDICT_TOKEN.encode()
            + b"\r\nContent-Length: 100000\r\n\r\n\xff\xd8\xff"
        )
        uploads.append((reader, writer))
    await asyncio.sleep(0.2)
    reader, writer = await served.connect()
    status, headers, body = await read_answer(reader)
    assert status == 429 and headers["content-type"].startswith("application/json")
    assert "per client" in json.loads(body)["error"] and headers["retry-after"]
    for upload_reader, _ in uploads:
        assert not await closed(upload_reader, 0.05), "requests in progress are never displaced"


async def test_the_total_cap_holds_across_addresses(serve, shipped_classifier) -> None:
    served = await serve(
        "http.connections.max_total=8", "http.connections.max_per_client=4", classifier=shipped_classifier
    )
    busy = []
    for index in range(8):
        reader, writer = await served.connect(f"127.0.0.{10 + index // 4}")
        writer.write(
            b"POST /predict/image HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Authorization: Bearer "
            + API_PREDICT_TOKEN.encode()
            + b"\r\nContent-Length: 100000\r\n\r\n\xff\xd8\xff"
        )
        busy.append((reader, writer))
    await asyncio.sleep(0.2)
    assert served.guard.open_connections == 8
    reader, _ = await served.connect("127.0.0.20")
    status, _headers, body = await read_answer(reader)
    assert status == 503 and "connections open" in json.loads(body)["error"]
    assert served.guard.open_connections == 8


async def test_a_head_that_trickles_gets_408_and_a_silent_connection_is_closed(serve) -> None:
    served = await serve("http.connections.header_timeout_s=0.5")
    reader, writer = await served.connect()
    writer.write(b"GET /health HTTP/1.1\r\n")
    started = asyncio.get_running_loop().time()
    for _ in range(3):
        await asyncio.sleep(0.2)
        writer.write(b"X-Slow: 1\r\n")  # bytes keep coming, the deadline still holds
    status, _headers, body = await read_answer(reader)
    assert status == 408 and "0.5 s" in json.loads(body)["error"]
    assert asyncio.get_running_loop().time() - started < 2.0
    assert await closed(reader)

    silent_reader, _ = await served.connect()
    status, _, _ = await read_answer(silent_reader)
    assert status == 408
    assert await closed(silent_reader)
    assert served.guard.open_connections == 0


async def test_keep_alive_pauses_are_not_head_timeouts(serve) -> None:
    served = await serve("http.connections.header_timeout_s=0.3", "http.keepalive_timeout_s=10")
    reader, writer = await served.connect()
    for _ in range(2):
        writer.write(HEALTH_REQUEST)
        status, _, _ = await read_answer(reader)
        assert status in (200, 503)
        await asyncio.sleep(0.6)  # longer than the head's deadline, shorter than keep-alive
    assert not await closed(reader, 0.05)


async def test_head_bytes_are_capped_per_request(serve) -> None:
    served = await serve("http.connections.max_header_bytes=16384")
    reader, writer = await served.connect()
    writer.write(b"GET /health HTTP/1.1\r\n")
    for index in range(40):  # 40 headers of 1 kB, never finished
        writer.write(f"X-Filler-{index}: {'a' * 1000}\r\n".encode())
    status, _headers, body = await read_answer(reader)
    assert status == 431 and "16384 bytes" in json.loads(body)["error"]
    assert b"aaaa" not in body
    assert await closed(reader)
    assert served.guard.head_bytes == 0


async def test_head_bytes_are_capped_across_connections(serve) -> None:
    served = await serve(
        "http.connections.max_header_bytes=32768", "http.connections.max_total_header_bytes=65536"
    )
    streams = []
    for index in range(3):
        reader, writer = await served.connect(f"127.0.0.{30 + index}")
        writer.write(
            b"GET /health HTTP/1.1\r\n" + b"".join(f"X-F{i}: {'b' * 4000}\r\n".encode() for i in range(7))
        )
        streams.append((reader, writer))
        await asyncio.sleep(0.1)
    status, _, body = await read_answer(streams[2][0])
    assert status == 503 and "too many request headers" in json.loads(body)["error"]
    assert served.guard.head_bytes <= 65536


async def test_a_body_is_not_counted_as_head(serve, shipped_classifier) -> None:
    served = await serve("http.connections.max_header_bytes=4096", classifier=shipped_classifier)
    body = b"\xff\xd8\xff" + b"\x00" * 300_000
    reader, writer = await served.connect()
    writer.write(
        b"POST /predict/image HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Authorization: Bearer "
        + API_PREDICT_TOKEN.encode()
        + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    )
    writer.write(body)
    status, _, answer = await read_answer(reader)
    assert status == 400 and "JPEG" in json.loads(answer)["error"], "the decoder refused it, not the guard"


async def test_parser_errors_are_json_without_echo_or_traceback(serve, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    served = await serve()
    secret = "Bearer super-secret-token-that-must-not-be-logged"
    reader, writer = await served.connect()
    writer.write(
        b"GET /health HTTP/1.1\r\nAuthorization: "
        + secret.encode()
        + b"\r\nX-Big: "
        + b"c" * 9000
        + b"\r\n\r\n"
    )
    status, headers, body = await read_answer(reader)
    assert status == 431 and headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert set(error) == {"error", "code", "timestamp"} and error["code"] == 431
    assert b"ccc" not in body and b"secret" not in body

    reader, writer = await served.connect()
    writer.write(b"GET /he\x01lth HTTP/1.1\r\n\r\n")
    status, headers, body = await read_answer(reader)
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert b"\x01" not in body

    text = caplog.text
    assert "super-secret" not in text and "ccccc" not in text
    assert not any(record.exc_info for record in caplog.records), "no traceback for a client's mistake"


@pytest.mark.parametrize(("hard", "soft_after", "warns"), [(2000, 640, False), (300, 300, True)])
def test_the_file_limit_is_raised_to_what_the_caps_need_or_a_warning_says_why_not(
    hard: int, soft_after: int, warns: bool
) -> None:
    """In a child process: the limit is per process, and this one's must stay as it is."""
    import subprocess
    import sys

    code = (
        "import logging, resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, (100, {hard}))\n"
        "from recyclex_edge.api.guard import ensure_file_limit\n"
        "from recyclex_edge.config.connections import ConnectionsConfig\n"
        "logging.basicConfig()\n"
        "ensure_file_limit(ConnectionsConfig())\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert int(done.stdout) == soft_after
    assert ("raise LimitNOFILE" in done.stderr) is warns, done.stderr


# Keep-alive: whatever the previous request left on the connection (a body nobody read, a pipelined
# request, a head cut into segments), the next request is parsed as aiohttp's parser sees it, and only
# the bytes of an unfinished head count against the head's caps.

NOT_A_JPEG = (
    b"\xff\xd8\xff" + b"\x00" * 300_000
)  # a JPEG's magic bytes: read whole, then refused by the decoder


def image_head(length: int, *, token: str | None = API_PREDICT_TOKEN, chunked: bool = False) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST /predict/image HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n{auth}{framing}\r\n\r\n"
    ).encode()


def chunked(body: bytes, size: int = 50_000) -> bytes:
    parts = [
        f"{len(body[i : i + size]):x}\r\n".encode() + body[i : i + size] + b"\r\n"
        for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


async def expect_decoder_refusal(reader: asyncio.StreamReader) -> None:
    status, headers, answer = await read_answer(reader)
    assert status == 400 and "JPEG" in json.loads(answer)["error"], (status, answer[:200])
    assert headers.get("connection") != "close"


async def test_after_an_early_refusal_the_unread_body_is_drained_and_the_next_request_parsed(
    serve, shipped_classifier
) -> None:
    served = await serve("http.connections.max_header_bytes=4096", classifier=shipped_classifier)
    reader, writer = await served.connect()
    first = b"\xff\xd8\xff" + b"\x00" * 20_000
    writer.write(image_head(len(first), token=None) + first[:1000])  # refused (401) before its body is read
    status, headers, _ = await read_answer(reader)
    assert status == 401 and headers.get("connection") != "close", "a small rest is drained"
    # The rest of that body and the start of the next request arrive in one segment, the rest later.
    writer.write(first[1000:] + image_head(len(NOT_A_JPEG)) + NOT_A_JPEG[:1000])
    await asyncio.sleep(0.2)
    writer.write(NOT_A_JPEG[1000:])
    await expect_decoder_refusal(reader)
    assert served.guard.head_bytes == 0


async def test_an_answer_before_a_large_rest_of_the_body_says_connection_close_and_closes(
    serve, shipped_classifier
) -> None:
    served = await serve(classifier=shipped_classifier)
    for length, framing in [
        (10_000_000, image_head(10_000_000, token=None)),
        (None, image_head(0, chunked=True)),
    ]:
        reader, writer = await served.connect()
        writer.write(framing.replace(b"image/jpeg", b"text/plain") + (b"1000\r\n" if length is None else b""))
        writer.write(b"x" * 1000)
        status, headers, _ = await read_answer(reader)
        assert status in (401, 415) and headers["connection"] == "close"
        # The rest is received (so the answer is not lost to a reset), then the connection closes.
        rest = b"x" * (length - 1000) if length else b"x" * 3096 + b"\r\n0\r\n\r\n"
        writer.write(rest + HEALTH_REQUEST)
        assert await closed(reader), "nothing after the answer, and the connection closes"


async def test_a_pipelined_request_keeps_its_body_when_the_one_before_is_answered(
    serve, shipped_classifier
) -> None:
    served = await serve("http.connections.max_header_bytes=4096", classifier=shipped_classifier)
    reader, writer = await served.connect()
    writer.write(HEALTH_REQUEST + image_head(len(NOT_A_JPEG)) + NOT_A_JPEG[:1000])
    status, _, _ = await read_answer(reader)
    assert status in (200, 503)
    await asyncio.sleep(0.2)
    writer.write(NOT_A_JPEG[1000:])
    await expect_decoder_refusal(reader)


async def test_heads_and_bodies_cut_anywhere_are_parsed_on_one_connection(serve, shipped_classifier) -> None:
    served = await serve("http.connections.max_header_bytes=4096", classifier=shipped_classifier)
    reader, writer = await served.connect()
    stream = (
        image_head(len(NOT_A_JPEG))
        + NOT_A_JPEG
        + image_head(0, chunked=True)
        + chunked(NOT_A_JPEG)
        + HEALTH_REQUEST
        + image_head(len(NOT_A_JPEG))
        + NOT_A_JPEG
    )
    # Cut inside a head's blank line, a chunk-size line, the chunked terminator, and across messages.
    first_head = len(image_head(len(NOT_A_JPEG)))
    cuts = sorted({7, first_head - 1, first_head + 150_000, stream.find(b"0\r\n\r\n") + 4, len(stream) - 100})
    cuts += [stream.find(b"\r\n", first_head + len(NOT_A_JPEG) + 200) + 1]
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        writer.write(stream[start:cut])
        await writer.drain()
        await asyncio.sleep(0.05)
        start = cut
    await expect_decoder_refusal(reader)
    await expect_decoder_refusal(reader)
    status, _, _ = await read_answer(reader)
    assert status in (200, 503)
    await expect_decoder_refusal(reader)
    assert served.guard.head_bytes == 0


async def test_many_pipelined_requests_are_all_answered_in_order(serve) -> None:
    served = await serve()
    reader, writer = await served.connect()
    writer.write(b"".join(f"GET /health?n={n} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in range(100)))
    for _ in range(100):
        status, _, body = await read_answer(reader)
        assert status in (200, 503) and "components" in json.loads(body)


@pytest.mark.parametrize("segments", [1, 5])
async def test_the_head_cap_counts_the_whole_head_however_it_arrives(serve, segments: int) -> None:
    served = await serve("http.connections.max_header_bytes=4096")

    def head(size: int) -> bytes:
        start, end = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
        return start + b"p" * (size - len(start) - len(end)) + end

    for size, refused in [(4096, False), (4097, True)]:
        reader, writer = await served.connect()
        request = head(size)
        step = -(-len(request) // segments)
        for offset in range(0, len(request), step):
            writer.write(request[offset : offset + step])
            await writer.drain()
            await asyncio.sleep(0.02)
        status, _, body = await read_answer(reader)
        if refused:
            assert status == 431 and "4096 bytes" in json.loads(body)["error"]
            assert await closed(reader)
        else:
            assert status in (200, 503), body
        writer.close()
    assert served.guard.head_bytes == 0


async def test_a_head_in_the_same_read_as_the_request_before_it_is_counted_and_timed(serve) -> None:
    served = await serve("http.connections.max_header_bytes=4096", "http.connections.header_timeout_s=0.5")
    reader, writer = await served.connect()
    writer.write(HEALTH_REQUEST + b"GET /health HTTP/1.1\r\nX-Pad: " + b"p" * 3000)  # never finished
    status, _, _ = await read_answer(reader)
    assert status in (200, 503)
    status, _, _ = await read_answer(reader, timeout_s=2.0)
    assert status == 408 and await closed(reader)

    reader, writer = await served.connect()
    writer.write(HEALTH_REQUEST + b"GET /health HTTP/1.1\r\nX-Pad: " + b"p" * 5000)
    # Over the cap behind a request still being answered: no answer could be told from that one's.
    assert await closed(reader, 2.0)
    assert served.guard.refused["head_too_large"] == 1 and served.guard.head_bytes == 0


async def test_a_chunked_body_is_followed_by_its_framing_not_searched_for_blank_lines(
    serve, shipped_classifier
) -> None:
    served = await serve("http.connections.max_header_bytes=4096", classifier=shipped_classifier)
    reader, writer = await served.connect()
    lines = b"\xff\xd8\xff" + b"\n\r\n" * 1_000_000  # framing-like bytes in the chunks' data
    body = b"".join(
        f"{len(lines[i : i + 100_000]):X};ext=1\r\n".encode() + lines[i : i + 100_000] + b"\r\n"
        for i in range(0, len(lines), 100_000)
    )
    started = time.process_time()
    writer.write(image_head(0, chunked=True) + body + b"0\r\nX-Trailer: 1\r\n\r\n" + HEALTH_REQUEST)
    await expect_decoder_refusal(reader)
    status, _, _ = await read_answer(reader)
    assert status in (200, 503)
    # Searching the data for blank lines fed the parser every 3 bytes: 7 s of the event loop for 3 MB.
    assert time.process_time() - started < 1.0
