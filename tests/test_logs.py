"""The log cannot be forged or flooded: control characters escaped in every field, volume rate limited
with counted suppression. Checked on the real handler configure_logging installs, and through the API."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from recyclex_edge.config import LoggingConfig
from recyclex_edge.logs import configure_logging, escape_control, flush_suppressed

LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


@pytest.fixture
def stderr_log() -> Iterator[tuple[io.StringIO, object]]:
    """configure_logging's own handler, writing into a buffer instead of stderr; restored afterwards."""
    buffer = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def configure(**settings: object) -> None:
        configure_logging(LoggingConfig(**settings))  # type: ignore[arg-type]
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
        handler.setStream(buffer)

    yield buffer, configure
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def test_control_characters_are_escaped_in_every_field(stderr_log) -> None:
    buffer, configure = stderr_log
    configure(format="text")
    log = logging.getLogger("recyclex_edge.test")
    log.info(
        "path=%s subject=%s",
        "/x\n2026-01-01 00:00:00,000 INFO recyclex_edge.api.access: forged",
        "a\rb\x1b[31m",
    )
    try:
        raise ValueError("line one\nINFO forged from an exception")
    except ValueError:
        log.exception("failed on %s", "/y\u2028z")
    lines = buffer.getvalue().splitlines()
    assert all(LINE_START.match(line) or line.startswith("  | ") for line in lines), lines
    assert sum(1 for line in lines if LINE_START.match(line)) == 2
    assert "\\x0a2026-01-01" in lines[0] and "a\\x0db\\x1b[31m" in lines[0]
    assert "/y\\u2028z" in buffer.getvalue()


def test_escape_control_keeps_printable_text() -> None:
    assert escape_control("plain ascii, ünïcode ✓") == "plain ascii, ünïcode ✓"
    assert escape_control("\x00\x7f\x85") == "\\x00\\x7f\\x85"


def test_a_flood_of_one_message_is_cut_and_counted(stderr_log) -> None:
    buffer, configure = stderr_log
    configure(max_lines_per_s=1, burst_lines=5)
    log = logging.getLogger("asyncio")
    for _ in range(10_000):
        log.error(
            "socket.accept() out of system resource",
            exc_info=(OSError, OSError(24, "Too many open files"), None),
        )
    logging.getLogger("recyclex_edge.test").info("another kind of message still gets through")
    flush_suppressed()
    text = buffer.getvalue()
    assert text.count("socket.accept() out of system resource") <= 7
    assert "another kind of message still gets through" in text
    summary = re.search(r"(\d+) similar messages suppressed .*socket\.accept\(\)", text)
    assert summary and int(summary.group(1)) >= 9_990
    assert len(text) < 5_000


async def test_access_lines_of_one_client_are_limited_and_cannot_forge_lines(api_client, stderr_log) -> None:
    buffer, configure = stderr_log
    configure(max_lines_per_s=1, burst_lines=20)
    client = await api_client(classifier=None)
    forged = (
        "/x%0a2026-01-01%2000:00:00,000%20INFO%20recyclex_edge.api.access:"
        "%20method=POST%20path=/api/commands/mode"
    )
    await client.get(forged)
    for index in range(200):
        await client.get(f"/{'p' * 8000}-{index}")
    flush_suppressed()
    lines = buffer.getvalue().splitlines()
    access = [line for line in lines if "recyclex_edge.api.access:" in line]
    assert all(LINE_START.match(line) for line in lines), "no line starts with anything but our prefix"
    assert len(access) <= 25, len(access)
    assert all(len(line) < 600 for line in access), "paths are clipped"
    assert any("similar messages suppressed" in line for line in access)
    assert "\\x0a2026-01-01" in access[0]


async def test_a_jwt_subject_with_a_newline_cannot_forge_a_line(api_client, stderr_log) -> None:
    import time

    import jwt

    secret = "a-shared-secret-of-at-least-32-characters!"
    buffer, configure = stderr_log
    configure()
    client = await api_client(f"http.auth.jwt.secret={secret}", classifier=None)
    forged_sub = (
        "dash\n2026-01-01 00:00:00,000 INFO recyclex_edge.api.access: method=POST path=/api/commands/x"
    )
    token = jwt.encode({"sub": forged_sub, "scope": "predict", "exp": int(time.time()) + 60}, secret)
    await client.get("/health", headers={"Authorization": f"Bearer {token}"})
    for _ in range(100):
        if "subject=jwt:dash" in buffer.getvalue():
            break
        await asyncio.sleep(0.01)
    lines = buffer.getvalue().splitlines()
    assert all(LINE_START.match(line) for line in lines)
    assert any("subject=jwt:dash\\x0a2026-01-01" in line for line in lines)
