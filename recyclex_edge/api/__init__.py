"""The HTTP API: /health, /predict/image, /predict/video, /predict/live (WebSocket), /metrics, /openapi.json.

`build_app()` wires it; the daemon runs it with `AccessLogger`. It shares the daemon's `Classifier` (one
preprocessing, one pool of interpreters); a missing classifier leaves /health working and the predict
endpoints answering 503. `app[EVENTS]` is the hub the pipeline publishes the bin's events to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import WSCloseCode, web

from recyclex_edge.api.access_log import ACCESS_LOG, AccessLogger
from recyclex_edge.api.auth import Authenticator, RoutePolicy
from recyclex_edge.api.cache import ResultCache
from recyclex_edge.api.errors import error_middleware
from recyclex_edge.api.guard import close_after_an_unread_body
from recyclex_edge.api.inference import InferenceService, InferenceSlot
from recyclex_edge.api.keys import (
    ALLOWED_HOSTS,
    AUTHENTICATOR,
    CLASSIFIER,
    CONFIG,
    EVENTS,
    HEALTH,
    INFERENCE,
    LIVE_SOCKETS,
    LIVE_SOCKETS_PER_CLIENT,
    METRICS,
    RATE_LIMITER,
    ROUTE_POLICIES,
    STARTED_MONOTONIC,
    UPLOAD_SLOTS,
)
from recyclex_edge.api.metrics import Metrics
from recyclex_edge.api.middleware import (
    allowed_host_names,
    cors_middleware,
    deadline_middleware,
    guard_middleware,
    host_middleware,
    observe_middleware,
)
from recyclex_edge.api.ratelimit import RateLimiter
from recyclex_edge.api.routes import UPLOADS_DIR, VIDEO_PREFIX, api_routes
from recyclex_edge.api.uploads import UploadSlots
from recyclex_edge.classifier import Classifier
from recyclex_edge.config import Config
from recyclex_edge.config.http import HttpConfig, parse_rate
from recyclex_edge.decision import ConfidencePolicy
from recyclex_edge.events import EventHub
from recyclex_edge.health import HealthRegistry, Status

log = logging.getLogger("recyclex_edge.api")

__all__ = ["ACCESS_LOG", "EVENTS", "AccessLogger", "build_app"]


def _route_policies(http: HttpConfig) -> dict[str, RoutePolicy]:
    auth = http.auth
    return {
        "/health": RoutePolicy(None, auth.public_health, "other"),
        "/metrics": RoutePolicy("admin", auth.public_metrics, "other"),
        "/openapi.json": RoutePolicy(None, True, "other"),
        "/predict/image": RoutePolicy("predict", False, "predict_image"),
        "/predict/video": RoutePolicy("predict", False, "predict_video"),
        "/predict/live": RoutePolicy("predict", False, "predict_live"),
    }


def _rate_limiter(http: HttpConfig) -> RateLimiter:
    limits = http.rate_limit
    rates = {
        "predict_image": parse_rate(limits.predict_image),
        "predict_video": parse_rate(limits.predict_video),
        "predict_live": parse_rate(limits.predict_live),
        "other": parse_rate(limits.other),
    }
    return RateLimiter(rates, limits.max_clients)


def _warn_about_protection(http: HttpConfig, authenticator: Authenticator) -> None:
    if not http.auth.enabled:
        log.warning(
            "!!! HTTP AUTHENTICATION IS OFF (http.auth.enabled=false): anyone who can reach port %d can "
            "use every endpoint. Use this only in a lab or for a demo. !!!",
            http.port,
        )
    elif not authenticator.has_credentials:
        log.warning(
            "http.auth is on but no API token or JWT key is configured: only the public endpoints answer; "
            "add http.auth.tokens or http.auth.jwt"
        )
    if not http.rate_limit.enabled:
        log.warning(
            "!!! HTTP RATE LIMITING IS OFF (http.rate_limit.enabled=false): one client can saturate the bin. "
            "Use this only for a benchmark. !!!"
        )


def _remove_stale_uploads(uploads_dir: Path) -> int:
    uploads_dir.mkdir(parents=True, exist_ok=True)
    stale = list(uploads_dir.glob(f"{VIDEO_PREFIX}*.mp4"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


async def _uploads_ctx(app: web.Application) -> AsyncIterator[None]:
    """The directory videos stream into; leftovers of a crash are removed at start."""
    uploads_dir = app[CONFIG].storage.state_dir / UPLOADS_DIR
    removed = await asyncio.to_thread(_remove_stale_uploads, uploads_dir)
    if removed:
        log.info("removed %d stale video upload(s) from %s", removed, uploads_dir)
    yield


def _inference_ctx(
    policy: ConfidencePolicy | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The inference service (its worker threads) lives from start-up (or the first model loaded
    by reload-model) to clean-up."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        http = app[CONFIG].http

        def start(classifier: Classifier, policy: ConfidencePolicy) -> InferenceService:
            return InferenceService(
                classifier,
                policy,
                app[METRICS],
                ResultCache(http.cache.max_entries, http.cache.ttl_s) if http.cache.enabled else None,
                max_pending=http.max_pending_inferences,
                max_pixels=http.max_pixels,
                retry_after_s=http.retry_after_s,
            )

        slot = InferenceSlot(start)
        classifier = app[CLASSIFIER]
        if classifier is not None and policy is not None:
            slot.use_classifier(classifier, policy)
        app[INFERENCE] = slot
        try:
            yield
        finally:
            await slot.close()

    return ctx


async def _close_live_sockets(app: web.Application) -> None:
    sockets = app[LIVE_SOCKETS]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"the bin is shutting down")


def build_app(config: Config, classifier: Classifier | None, health: HealthRegistry) -> web.Application:
    """The aiohttp application. Raises ConfigError if decision thresholds name labels the model lacks."""
    http = config.http
    policy = None
    if classifier is not None:
        policy = ConfidencePolicy.for_model(classifier, config.decision)
    elif "classifier" not in health.snapshot():
        health.report("classifier", Status.FAILING, "no classifier was loaded; predictions are unavailable")

    app = web.Application(
        middlewares=[
            observe_middleware,
            cors_middleware,
            error_middleware,
            host_middleware,
            guard_middleware,
            deadline_middleware,
        ],
        # Uploads are streamed with their own limits; this only bounds bodies read whole by aiohttp itself.
        client_max_size=http.max_upload_bytes,
    )
    authenticator = Authenticator(http.auth)
    app[CONFIG] = config
    app[HEALTH] = health
    app[CLASSIFIER] = classifier
    app[EVENTS] = EventHub(http.live.event_queue_size)
    app[METRICS] = Metrics()
    app[AUTHENTICATOR] = authenticator
    app[ALLOWED_HOSTS] = allowed_host_names(http.allowed_hosts)
    app[RATE_LIMITER] = _rate_limiter(http)
    app[ROUTE_POLICIES] = _route_policies(http)
    app[STARTED_MONOTONIC] = time.monotonic()
    app[UPLOAD_SLOTS] = UploadSlots(http.max_concurrent_uploads)
    live_sockets: set[web.WebSocketResponse] = set()
    app[LIVE_SOCKETS] = live_sockets
    app[LIVE_SOCKETS_PER_CLIENT] = {}
    app.cleanup_ctx.append(_uploads_ctx)
    app.cleanup_ctx.append(_inference_ctx(policy))
    app.on_shutdown.append(_close_live_sockets)
    app.on_response_prepare.append(close_after_an_unread_body)
    app.add_routes(api_routes)
    _warn_about_protection(http, authenticator)
    return app
