"""GET /predict/live: a WebSocket for classifying a stream of frames, or for watching the bin's events.

Frames: the client sends binary JPEG/PNG messages and gets one JSON answer per classified frame, with
the frame's sequence number, in order. One frame is classified at a time; while it runs only the newest
waiting frame is kept (newest wins), so a fast sender never builds a backlog, and each answer says how
many frames were dropped since the previous one. A per-socket token bucket enforces the fps limit
(off with the rest of the rate limiting).

Events: the text message {"subscribe": "events"} turns the socket into a feed of the bin's own events.

Bad input closes the socket with a reason: 1003 for a message that is not an image or a known command,
1007 for an image that cannot be decoded, 1009 (by aiohttp) for a message over the size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from recyclex_edge.api.errors import ApiError
from recyclex_edge.api.inference import InferenceService
from recyclex_edge.api.metrics import Metrics
from recyclex_edge.api.ratelimit import TokenBucket
from recyclex_edge.events import EventHub
from recyclex_edge.imaging import sniff_format

log = logging.getLogger("recyclex_edge.api")

SUBSCRIBE_EVENTS = {"subscribe": "events"}
_MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 123 bytes


async def close_with_reason(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    await ws.close(code=code, message=reason.encode()[:_MAX_REASON_BYTES])


class LiveSession:
    """One socket's state: the newest waiting frame, counters since the last answer, the fps bucket."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        service: InferenceService,
        metrics: Metrics,
        events: EventHub,
        fps_limit: float | None,
    ) -> None:
        self._ws = ws
        self._service = service
        self._metrics = metrics
        self._events = events
        self._fps = TokenBucket(fps_limit, fps_limit) if fps_limit is not None else None
        self._waiting: tuple[int, float, bytes] | None = None
        self._frame_ready = asyncio.Event()
        self._seq = 0
        self._dropped = 0
        self._rate_limited = 0

    async def run(self) -> None:
        worker = asyncio.create_task(self._classify_frames(), name="live-classify")
        forwarder: asyncio.Task[None] | None = None
        try:
            async for message in self._ws:
                if message.type == WSMsgType.BINARY:
                    if forwarder is not None:
                        await close_with_reason(
                            self._ws,
                            WSCloseCode.UNSUPPORTED_DATA,
                            "this socket is subscribed to events; open another one to send frames",
                        )
                        break
                    if not await self._accept_frame(message.data):
                        break
                elif message.type == WSMsgType.TEXT and forwarder is None and _is_subscribe(message.data):
                    worker.cancel()
                    forwarder = asyncio.create_task(self._forward_events(), name="live-events")
                else:
                    await close_with_reason(
                        self._ws,
                        WSCloseCode.UNSUPPORTED_DATA,
                        'send binary JPEG/PNG frames, or the text {"subscribe": "events"} once',
                    )
                    break
        finally:
            for task in (worker, forwarder):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _accept_frame(self, data: bytes) -> bool:
        self._seq += 1
        if self._fps is not None and self._fps.take() > 0:
            self._rate_limited += 1
            self._metrics.live_dropped.labels("rate_limited").inc()
            return True
        if sniff_format(data) is None:
            await close_with_reason(
                self._ws, WSCloseCode.UNSUPPORTED_DATA, f"frame {self._seq} is not a JPEG or PNG image"
            )
            return False
        if self._waiting is not None:
            self._dropped += 1
            self._metrics.live_dropped.labels("superseded").inc()
        self._waiting = (self._seq, time.perf_counter(), data)
        self._frame_ready.set()
        return True

    async def _classify_frames(self) -> None:
        try:
            await self._classify_loop()
        except ConnectionError:  # the peer went away mid-answer; the receive loop ends the session
            pass
        except Exception:
            # A bug must not leave a socket open that silently never answers again.
            log.exception("live socket failed")
            await close_with_reason(
                self._ws, WSCloseCode.INTERNAL_ERROR, "internal error; it has been logged"
            )

    async def _classify_loop(self) -> None:
        while True:
            await self._frame_ready.wait()
            self._frame_ready.clear()
            if self._waiting is None:
                continue
            (seq, received, data), self._waiting = self._waiting, None
            counters: dict[str, Any] = {
                "seq": seq,
                "dropped": self._dropped,
                "rate_limited": self._rate_limited,
            }
            self._dropped = self._rate_limited = 0
            try:
                prediction = await self._service.predict_image(data, None)
            except ApiError as error:
                if error.status == 503:  # the shared queue is full: say so for this frame, keep going
                    await self._ws.send_json({**counters, "error": error.message, "code": error.status})
                    continue
                await close_with_reason(self._ws, WSCloseCode.INVALID_TEXT, f"frame {seq}: {error.message}")
                return
            total_ms = (time.perf_counter() - received) * 1000.0
            await self._ws.send_json({**counters, **prediction.as_dict(total_ms)})

    async def _forward_events(self) -> None:
        with contextlib.suppress(ConnectionError), self._events.subscribe() as subscription:
            await self._ws.send_json({"subscribed": "events"})
            while True:
                event, dropped = await subscription.get()
                await self._ws.send_json({"event": event, "dropped": dropped})


def _is_subscribe(text: str) -> bool:
    try:
        return bool(json.loads(text) == SUBSCRIBE_EVENTS)
    except ValueError:
        return False
