"""GET /predict/live: ordered answers, newest-wins dropping, the fps limit, bad input, events."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from aiohttp import WSMsgType, WSServerHandshakeError
from aiohttp.client_ws import ClientWebSocketResponse

from recyclex_edge.api.keys import EVENTS
from recyclex_edge.imaging import decode_image
from tests.conftest import API_AUTH, val_photos

FRAMES = [photo.read_bytes() for photo in val_photos("glass")[:4] + val_photos("paper")[:4]]


async def answers_until(ws: ClientWebSocketResponse, last_seq: int) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    while not answers or answers[-1]["seq"] < last_seq:
        answers.append(await asyncio.wait_for(ws.receive_json(), 10))
    return answers


async def test_each_frame_gets_its_answer_in_order(api_client, shipped_classifier) -> None:
    client = await api_client()
    async with client.ws_connect("/predict/live", headers=API_AUTH) as ws:
        for seq, frame in enumerate(FRAMES[:3], start=1):
            await ws.send_bytes(frame)
            answer = await asyncio.wait_for(ws.receive_json(), 10)
            expected = shipped_classifier.classify(decode_image(frame))
            assert answer["seq"] == seq and answer["dropped"] == 0 and answer["rate_limited"] == 0
            assert (
                answer["class"] == expected.label and abs(answer["confidence"] - expected.confidence) < 1e-6
            )
            assert answer["decision"] in (expected.label, "uncertain") and answer["cached"] is False


async def test_a_burst_keeps_only_the_newest_waiting_frame_and_counts_the_rest(api_client) -> None:
    client = await api_client()
    burst = FRAMES * 3
    async with client.ws_connect("/predict/live", headers=API_AUTH) as ws:
        for frame in burst:
            await ws.send_bytes(frame)
        answers = await answers_until(ws, len(burst))
    seqs = [answer["seq"] for answer in answers]
    assert seqs == sorted(set(seqs)) and seqs[-1] == len(burst), "in order, and the newest frame always wins"
    dropped = sum(answer["dropped"] for answer in answers)
    assert len(answers) + dropped == len(burst), "every frame is either answered or counted as dropped"
    assert dropped >= 1, "frames sent faster than inference are dropped, not queued"


async def test_the_fps_limit_refuses_extra_frames_and_says_how_many(api_client) -> None:
    client = await api_client("http.rate_limit.enabled=true", "http.rate_limit.live_fps=2")
    burst = FRAMES * 2
    async with client.ws_connect("/predict/live", headers=API_AUTH) as ws:
        for frame in burst:
            await ws.send_bytes(frame)
        await asyncio.sleep(1.0)  # the bucket refills; the next frame is accepted for sure
        await ws.send_bytes(FRAMES[0])
        answers = await answers_until(ws, len(burst) + 1)
    rate_limited = sum(answer["rate_limited"] for answer in answers)
    dropped = sum(answer["dropped"] for answer in answers)
    assert rate_limited >= len(burst) // 2, "a 2-frame bucket lets only a few frames of a burst through"
    assert len(answers) + dropped + rate_limited == len(burst) + 1


@pytest.mark.parametrize(
    ("message", "code", "words"),
    [
        ("not json", 1003, "subscribe"),
        (json.dumps({"subscribe": "nothing"}), 1003, "subscribe"),
        (b"GIF89a not an image", 1003, "frame 1 is not a JPEG or PNG"),
        (FRAMES[0][:2000], 1007, "frame 1: truncated JPEG"),
    ],
    ids=["text", "unknown command", "not an image", "truncated image"],
)
async def test_bad_input_closes_the_socket_with_a_reason(api_client, message, code, words) -> None:
    client = await api_client()
    async with client.ws_connect("/predict/live", headers=API_AUTH) as ws:
        if isinstance(message, bytes):
            await ws.send_bytes(message)
        else:
            await ws.send_str(message)
        closing = await asyncio.wait_for(ws.receive(), 10)
    assert closing.type == WSMsgType.CLOSE and closing.data == code and words in closing.extra


async def test_a_message_over_the_size_limit_closes_with_1009(api_client) -> None:
    client = await api_client("http.live.max_message_bytes=4096")
    async with client.ws_connect("/predict/live", headers=API_AUTH) as ws:
        await ws.send_bytes(FRAMES[0])
        closing = await asyncio.wait_for(ws.receive(), 10)
    assert closing.type == WSMsgType.CLOSE and closing.data == 1009


async def test_subscribing_switches_the_socket_to_the_bins_events(api_client) -> None:
    client = await api_client()
    hub = client.app[EVENTS]
    async with client.ws_connect("/predict/live", headers=API_AUTH) as ws:
        await ws.send_str(json.dumps({"subscribe": "events"}))
        assert await asyncio.wait_for(ws.receive_json(), 10) == {"subscribed": "events"}
        event = {"type": "classification", "class": "glass", "confidence": 0.97}
        threading.Thread(target=hub.publish, args=(event,)).start()  # the pipeline publishes from threads
        assert await asyncio.wait_for(ws.receive_json(), 10) == {"event": event, "dropped": 0}
        await ws.send_bytes(FRAMES[0])
        closing = await asyncio.wait_for(ws.receive(), 10)
        assert closing.data == 1003 and "subscribed to events" in closing.extra
    for _ in range(100):
        if hub.subscriber_count == 0:
            break
        await asyncio.sleep(0.01)
    assert hub.subscriber_count == 0, "closing the socket unsubscribes"


async def test_sockets_are_limited_and_need_a_token(api_client) -> None:
    client = await api_client("http.live.max_connections=1")
    plain = await client.get("/predict/live", headers=API_AUTH)
    assert plain.status == 400 and (await plain.json())["code"] == 400, "a plain GET is not a WebSocket"
    with pytest.raises(WSServerHandshakeError) as anonymous:
        await client.ws_connect("/predict/live")
    assert anonymous.value.status == 401
    async with client.ws_connect("/predict/live", headers=API_AUTH):
        with pytest.raises(WSServerHandshakeError) as second:
            await client.ws_connect("/predict/live", headers=API_AUTH)
        assert second.value.status == 503


async def test_the_server_sends_heartbeat_pings(api_client) -> None:
    client = await api_client("http.live.heartbeat_s=0.1")
    async with client.ws_connect("/predict/live", headers=API_AUTH, autoping=False) as ws:
        message = await asyncio.wait_for(ws.receive(), 5)
        assert message.type == WSMsgType.PING
        await ws.pong(message.data)


async def test_browsers_authenticate_with_a_bearer_subprotocol(api_client) -> None:
    """A browser cannot set Authorization on a WebSocket; `bearer.<token>` as a subprotocol does the same
    checks, and the server echoes the protocol (browsers drop a socket whose protocol is not echoed)."""
    from tests.conftest import API_PREDICT_TOKEN

    client = await api_client()
    async with client.ws_connect("/predict/live", protocols=(f"bearer.{API_PREDICT_TOKEN}",)) as ws:
        assert ws.protocol == f"bearer.{API_PREDICT_TOKEN}"
        await ws.send_json({"subscribe": "events"})
        reply = await ws.receive_json(timeout=10)
        assert reply.get("subscribed") == "events"
    with pytest.raises(WSServerHandshakeError) as refused:
        await client.ws_connect("/predict/live", protocols=("bearer.not-a-valid-token",))
    assert refused.value.status == 401
