"""The handlers: parse, call, serialise. The work happens in the inference service and the uploads module."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from aiohttp import hdrs, web

from recyclex_edge import __version__
from recyclex_edge.api.errors import ApiError, clip, query_value
from recyclex_edge.api.inference import InferenceService
from recyclex_edge.api.keys import (
    CLASSIFIER,
    CLIENT,
    CONFIG,
    EVENTS,
    HEALTH,
    IDENTITY,
    INFERENCE,
    LIVE_SOCKETS,
    LIVE_SOCKETS_PER_CLIENT,
    METRICS,
    STARTED_MONOTONIC,
    UPLOAD_SLOTS,
)
from recyclex_edge.api.live import LiveSession
from recyclex_edge.api.middleware import websocket_origin_allowed, websocket_protocol_token
from recyclex_edge.api.openapi import OPENAPI
from recyclex_edge.api.uploads import FileSink, MemorySink, UploadKind, receive_upload
from recyclex_edge.api.video import VideoLimits, summarise
from recyclex_edge.health import Status
from recyclex_edge.imaging import sniff_format
from recyclex_edge.model_card import ModelCard

UPLOADS_DIR = "uploads"
VIDEO_PREFIX = "video-"

api_routes = web.RouteTableDef()


def _service(request: web.Request) -> InferenceService:
    service = request.app[INFERENCE].service
    if service is None:
        raise ApiError(
            503,
            "the classifier is not loaded (see GET /health for why); predictions are unavailable",
            reason="no_model",
        )
    return service


def _model_identity(card: ModelCard) -> dict[str, str]:
    return {"name": card.name, "version": card.version, "sha256": card.sha256}


@api_routes.get("/health")
async def health(request: web.Request) -> web.Response:
    registry = request.app[HEALTH]
    service = request.app[INFERENCE].service
    # The service holds the model in use (it changes on reload-model); without one, whatever loaded.
    classifier = service.classifier if service is not None else request.app[CLASSIFIER]
    overall = registry.overall()
    body = {
        "status": overall.value,
        "version": __version__,
        "uptime_s": round(time.monotonic() - request.app[STARTED_MONOTONIC], 3),
        "model": (
            None
            if classifier is None
            else {
                "name": classifier.card.name,
                "version": classifier.card.version,
                "sha256": classifier.card.sha256,
            }
        ),
        "components": {
            name: _without_paths(component.as_dict(), request.app[CONFIG].storage.state_dir)
            for name, component in sorted(registry.snapshot().items())
        },
    }
    return web.json_response(body, status=503 if overall == Status.FAILING else 200)


def _without_paths(component: dict[str, str], state_dir: Path) -> dict[str, str]:
    """/health is public: a component's detail (an outbox that cannot open its file, say) must not tell
    a stranger where the bin keeps its state. The log keeps the full text for technicians."""
    detail = component["detail"]
    for path in {str(state_dir.resolve()), str(state_dir)}:
        if path not in ("", "."):
            detail = detail.replace(path, "<state_dir>")
    return {**component, "detail": detail}


@api_routes.post("/predict/image")
async def predict_image(request: web.Request) -> web.Response:
    started = time.perf_counter()
    service = _service(request)
    config = request.app[CONFIG].http
    kind = UploadKind(
        "a JPEG or PNG image",
        frozenset({"image/jpeg", "image/png"}),
        config.max_upload_bytes,
        lambda head: sniff_format(head) is not None,
        config.max_multipart_parts,
    )
    with request.app[UPLOAD_SLOTS].hold():
        sink = MemorySink()
        await receive_upload(request, kind, sink, config.read_timeout_s)
        digest = sink.sha256() if config.cache.enabled else None
        prediction = await service.predict_image(sink.data(), digest)
    return web.json_response(prediction.as_dict((time.perf_counter() - started) * 1000.0))


def _sample_fps(request: web.Request) -> float:
    config = request.app[CONFIG].http
    raw = query_value(request, "fps")
    if raw is None:
        return config.video_fps_default
    try:
        fps = float(raw)
    except ValueError:
        fps = 0.0
    if not fps > 0 or fps == float("inf"):
        raise ApiError(400, f"fps must be a positive number, got {clip(raw, 40)!r}", reason="bad_parameter")
    return min(fps, config.video_fps_max)


@api_routes.post("/predict/video")
async def predict_video(request: web.Request) -> web.Response:
    started = time.perf_counter()
    service = _service(request)
    config = request.app[CONFIG]
    http = config.http
    sample_fps = _sample_fps(request)
    kind = UploadKind(
        "an MP4 video",
        frozenset({"video/mp4"}),
        http.max_video_bytes,
        lambda head: head[4:8] == b"ftyp",
        http.max_multipart_parts,
    )
    # Videos go to a file in the state directory, never whole into memory; it is removed on every path.
    fd, name = await asyncio.to_thread(
        tempfile.mkstemp, prefix=VIDEO_PREFIX, suffix=".mp4", dir=config.storage.state_dir / UPLOADS_DIR
    )
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            sink = FileSink(handle)
            await receive_upload(request, kind, sink, http.read_timeout_s)
            await sink.flush()
        limits = VideoLimits(http.max_video_duration_s, http.max_video_frames, http.max_video_pixels)
        samples = await service.predict_video(path, sample_fps, limits)
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)
    card = service.classifier.card
    return web.json_response(
        {
            "fps": sample_fps,
            "frames": [
                {"t_s": s.t_s, "class": s.classification.label, "confidence": s.classification.confidence}
                for s in samples
            ],
            "summary": summarise(samples),
            "model": {"name": card.name, "version": card.version},
            "timing": {"total_ms": (time.perf_counter() - started) * 1000.0},
        }
    )


@api_routes.get("/predict/live")
async def predict_live(request: web.Request) -> web.WebSocketResponse:
    service = _service(request)
    app = request.app
    live = app[CONFIG].http.live
    if not websocket_origin_allowed(request):
        raise ApiError(
            403,
            f"WebSocket origin {clip(request.headers.get(hdrs.ORIGIN, ''))} is not allowed; "
            "add it to http.cors_origins",
            reason="bad_origin",
        )
    sockets = app[LIVE_SOCKETS]
    per_client = app[LIVE_SOCKETS_PER_CLIENT]
    holder = request[IDENTITY].subject or request[CLIENT]
    if per_client.get(holder, 0) >= live.max_connections_per_client:
        raise ApiError(
            429,
            f"you have {per_client[holder]} live sockets open, the limit per token; close one first",
            reason="too_many_sockets_per_client",
            headers={hdrs.RETRY_AFTER: "5"},
        )
    if len(sockets) >= live.max_connections:
        raise ApiError(
            503,
            f"{len(sockets)} live sockets are open, the limit; close one or retry later",
            reason="too_many_sockets",
            headers={hdrs.RETRY_AFTER: "5"},
        )
    offered = websocket_protocol_token(request)
    ws = web.WebSocketResponse(
        heartbeat=live.heartbeat_s,
        # aiohttp refuses a message whose size reaches max_msg_size; the limit is inclusive for us.
        max_msg_size=live.max_message_bytes + 1,
        protocols=(offered,) if offered is not None else (),  # echoed, or the browser drops the socket
    )
    await ws.prepare(request)
    sockets.add(ws)
    per_client[holder] = per_client.get(holder, 0) + 1
    try:
        rate_limit = app[CONFIG].http.rate_limit
        fps_limit = rate_limit.live_fps if rate_limit.enabled else None
        session = LiveSession(ws, service, app[METRICS], app[EVENTS], fps_limit)
        await session.run()
    finally:
        sockets.discard(ws)
        per_client[holder] -= 1
        if per_client[holder] <= 0:
            del per_client[holder]
    return ws


@api_routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    registry = request.app[METRICS]
    return web.Response(body=registry.render(), headers={hdrs.CONTENT_TYPE: registry.content_type})


@api_routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)
