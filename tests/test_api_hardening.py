"""What an attacker on the facility network tried (issue 18), each against the real app on loopback:
inflate bombs, multipart floods, unbounded errors, live-socket hogging, cross-site WebSockets, DNS
rebinding, unknown-path floods, and a /health that named the state directory."""

from __future__ import annotations

import asyncio
import json
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from aiohttp import WSMsgType, WSServerHandshakeError

from recyclex_edge.errors import ImageDecodeError
from recyclex_edge.health import HealthRegistry, Status
from recyclex_edge.imaging import check_png_inflation, decode_image
from tests.conftest import API_ADMIN_AUTH, API_AUTH, val_photos


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def inflate_bomb_png(width: int, height: int, inflated_bytes: int) -> bytes:
    """A valid-looking PNG whose IDAT inflates to `inflated_bytes` of zeros, made in milliseconds: after
    a full flush deflate restarts, so one compressed MiB of zeros can be repeated."""
    step = 1 << 20
    compressor = zlib.compressobj(9)
    first = compressor.compress(b"\0" * step) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(b"\0" * step) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = first + repeated * (inflated_bytes // step - 1) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", stream)
        + _png_chunk(b"IEND", b"")
    )


def test_a_png_inflate_bomb_is_refused_after_inflating_only_what_its_pixels_need() -> None:
    bomb = inflate_bomb_png(100, 100, 2 << 30)  # 2 GiB of zeros behind a 100x100 header
    assert len(bomb) < 4 << 20
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(bomb)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("flags", [cv2.IMREAD_COLOR, cv2.IMREAD_GRAYSCALE, cv2.IMREAD_UNCHANGED])
def test_real_pngs_pass_the_inflation_check(flags: int) -> None:
    photo = cv2.imread(str(val_photos("metal")[0]), flags)
    if flags == cv2.IMREAD_UNCHANGED:
        photo = cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA).astype(np.uint16) * 257  # RGBA, 16 bits
    ok, encoded = cv2.imencode(".png", photo)
    assert ok
    check_png_inflation(encoded.tobytes())
    assert decode_image(encoded.tobytes()).shape[:2] == photo.shape[:2]


async def test_the_api_answers_a_bomb_with_400_quickly(api_client) -> None:
    client = await api_client()
    started = time.perf_counter()
    answer = await client.post(
        "/predict/image",
        data=inflate_bomb_png(100, 100, 1 << 30),
        headers={**API_AUTH, "Content-Type": "image/png"},
    )
    assert answer.status == 400 and "decompression bomb" in (await answer.json())["error"]
    assert time.perf_counter() - started < 3.0


def _multipart_with_empty_parts(count: int, name: str = "x") -> tuple[bytes, str]:
    boundary = "b0undary"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n\r\n'.encode()
    return part * count + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def test_many_multipart_parts_are_refused_without_stalling_the_loop(api_client) -> None:
    client = await api_client()
    body, content_type = _multipart_with_empty_parts(100_000)
    stalls: list[float] = []

    async def probe() -> None:
        for _ in range(20):
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            stalls.append(time.perf_counter() - started)

    prober = asyncio.create_task(probe())
    started = time.perf_counter()
    answer = await client.post(
        "/predict/image", data=body, headers={**API_AUTH, "Content-Type": content_type}
    )
    error = await answer.json()
    elapsed = time.perf_counter() - started
    await prober
    assert answer.status == 400 and "more than 8 parts" in error["error"]
    assert elapsed < 3.0 and max(stalls) < 1.0


async def test_the_no_file_field_error_does_not_echo_the_request(api_client) -> None:
    client = await api_client("http.max_multipart_parts=1000")
    body, content_type = _multipart_with_empty_parts(500, name="n" * 2000)
    answer = await client.post(
        "/predict/image", data=body, headers={**API_AUTH, "Content-Type": content_type}
    )
    text = await answer.text()
    assert answer.status == 400 and "no field 'file'" in json.loads(text)["error"]
    assert len(text) < 1000 and "495 more" in text


async def test_one_token_cannot_hold_every_live_socket(api_client) -> None:
    client = await api_client("http.live.max_connections=4", "http.live.max_connections_per_client=2")
    async with (
        client.ws_connect("/predict/live", headers=API_AUTH),
        client.ws_connect("/predict/live", headers=API_AUTH),
    ):
        with pytest.raises(WSServerHandshakeError) as third:
            await client.ws_connect("/predict/live", headers=API_AUTH)
        assert third.value.status == 429
        async with client.ws_connect("/predict/live", headers=API_ADMIN_AUTH) as admin:
            await admin.send_json({"subscribe": "events"})
            assert await admin.receive_json(timeout=10) == {"subscribed": "events"}
    async with client.ws_connect("/predict/live", headers=API_AUTH):
        pass  # closed sockets give their place back


async def test_live_sockets_check_the_origin(api_client) -> None:
    client = await api_client("http.cors_origins=[https://dash.example.org]")
    with pytest.raises(WSServerHandshakeError) as foreign:
        await client.ws_connect("/predict/live", headers={**API_AUTH, "Origin": "https://evil.example.com"})
    assert foreign.value.status == 403
    host = f"{client.host}:{client.port}"
    for origin in (f"http://{host}", "https://dash.example.org"):
        async with client.ws_connect("/predict/live", headers={**API_AUTH, "Origin": origin}) as ws:
            await ws.send_json({"subscribe": "events"})
            assert await ws.receive_json(timeout=10) == {"subscribed": "events"}


async def test_a_frame_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not(api_client) -> None:
    client = await api_client("http.live.max_message_bytes=4096")
    exactly = b"\xff\xd8\xff" + b"\0" * (4096 - 3)  # JPEG magic, not decodable: refused by the decoder
    async with client.ws_connect("/predict/live", headers=API_AUTH) as ws:
        await ws.send_bytes(exactly)
        closing = await asyncio.wait_for(ws.receive(), 10)
    assert closing.type == WSMsgType.CLOSE and closing.data == 1007, "the size passed; the decoder refused it"
    async with client.ws_connect("/predict/live", headers=API_AUTH) as ws:
        await ws.send_bytes(exactly + b"\0")
        closing = await asyncio.wait_for(ws.receive(), 10)
    assert closing.type == WSMsgType.CLOSE and closing.data == 1009


async def test_with_auth_off_unknown_host_names_are_refused(api_client) -> None:
    client = await api_client(
        "http.auth.enabled=false", "http.allowed_hosts=[bin-7.plant.example]", classifier=None
    )
    for host in ("127.0.0.1:8080", "localhost", "[::1]:80", "bin-7.plant.example", "BIN-7.plant.example."):
        answer = await client.get("/health", headers={"Host": host})
        assert answer.status in (200, 503), host
    rebound = await client.get("/health", headers={"Host": "attacker.example.com:8080"})
    assert rebound.status == 400 and "http.allowed_hosts" in (await rebound.json())["error"]

    with_auth = await api_client(classifier=None)
    answer = await with_auth.get("/health", headers={"Host": "attacker.example.com"})
    assert answer.status in (200, 503), "with auth on a rebound page has no token: no check needed"


async def test_unknown_paths_spend_the_rate_limit(api_client) -> None:
    client = await api_client(
        "http.rate_limit.enabled=true", "http.rate_limit.other=5/minute", classifier=None
    )
    statuses = [(await client.get(f"/nothing-{'x' * 5000}-{index}")).status for index in range(8)]
    assert statuses[:5] == [404] * 5 and statuses[5:] == [429] * 3
    answer = await client.get("/also-nothing-" + "y" * 5000)
    assert len(await answer.text()) < 600, "the path is not echoed whole"


async def test_public_health_does_not_name_the_state_directory(api_client, tmp_path) -> None:
    health = HealthRegistry()
    state = tmp_path / "state"
    health.report("outbox", Status.FAILING, f"cannot open {state}/outbox.sqlite3: disk I/O error")
    client = await api_client(classifier=None, health=health)
    text = await (await client.get("/health")).text()
    assert str(tmp_path) not in text and "<state_dir>/outbox.sqlite3" in text


async def test_uploads_held_in_memory_are_capped(api_client) -> None:
    from tests.conftest import API_PREDICT_TOKEN

    client = await api_client("http.max_concurrent_uploads=2")
    head = (
        "POST /predict/image HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        f"Authorization: Bearer {API_PREDICT_TOKEN}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    trickling = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(head + b"\xff\xd8\xff")
        trickling.append((reader, writer))
    await asyncio.sleep(0.2)
    answer = await client.post(
        "/predict/image",
        data=val_photos("glass")[0].read_bytes(),
        headers={**API_AUTH, "Content-Type": "image/jpeg"},
    )
    assert answer.status == 503 and "uploads are in progress" in (await answer.json())["error"]
    for _, writer in trickling:
        writer.close()
    await asyncio.sleep(0.2)
    again = await client.post(
        "/predict/image",
        data=val_photos("glass")[0].read_bytes(),
        headers={**API_AUTH, "Content-Type": "image/jpeg"},
    )
    assert again.status == 200, "slots are given back when an upload ends, even an interrupted one"
