"""The technician page and the small JSON/image API it reads: what a technician sees next to the bin.

`GET /` serves a static page (`recyclex_edge/web/`) that holds no data itself; everything it shows comes
from the same API anyone else calls, through the same authentication, scopes and rate limits:

| route | what | who |
|---|---|---|
| `GET /`, `GET /static/{name}` | the page and its script and style | anyone |
| `GET /api/state` | mode, counters, fill levels, detector state, device, who the caller is | as `/health` |
| `GET /api/history` | recent events (without images) and per-minute series | as `/health` |
| `GET /api/events/{event_id}/thumbnail.jpg` | an event's small photo | any valid token |
| `GET /api/camera.jpg` | the latest camera frame, re-encoded at most once a second | any valid token |
| `POST /api/commands/{name}` | the commands MQTT runs (mode, test-actuator, ...) | scope `admin` |

Images need a token because a camera in a public place may see a passer-by's hand or face.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

from aiohttp import hdrs, web

from recyclex_edge.api.auth import RoutePolicy
from recyclex_edge.api.errors import ApiError
from recyclex_edge.api.keys import AUTHENTICATOR, CLIENT, CONFIG, IDENTITY, ROUTE_POLICIES
from recyclex_edge.api.openapi import PAGE_ASSETS
from recyclex_edge.camera import Camera
from recyclex_edge.errors import RecycleXError
from recyclex_edge.history import History, scaled_jpeg
from recyclex_edge.mqtt.commands import ARGUMENTS, CALLER, MAX_PAYLOAD_BYTES, MODES, OPTIONAL_ARGUMENTS

log = logging.getLogger("recyclex_edge.api.page")

CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]

CAMERA_MAX_AGE_S = 1.0  # /api/camera.jpg re-encodes at most this often, however many pages poll it
CAMERA_WIDTH_PX = 640
_ASSETS = PAGE_ASSETS  # named in /openapi.json too
# The page loads only its own files and talks only to its own origin (the WebSocket included).
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    hdrs.CACHE_CONTROL: "no-cache",
}


def camera_jpeg(camera: Camera | None, *, width_px: int = CAMERA_WIDTH_PX) -> Callable[[], bytes | None]:
    """A `camera_snapshot` for `add_technician_page`: the latest frame as a JPEG, or None before one."""

    def snapshot() -> bytes | None:
        frame = camera.latest() if camera is not None else None
        return scaled_jpeg(frame.image, width_px, quality=75) if frame is not None else None

    return snapshot


def _read_asset(name: str) -> bytes:
    return (resources.files("recyclex_edge") / "web" / name).read_bytes()


def _arguments(name: str, body: bytes) -> dict[str, Any]:
    """The command's arguments from a JSON body, checked as the MQTT dispatcher checks them."""
    try:
        document = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}", reason="bad_body") from None
    if not isinstance(document, dict):
        raise ApiError(400, 'the body must be a JSON object, e.g. {"mode": "sort"}', reason="bad_body")
    spec = ARGUMENTS.get(name, {})
    optional = OPTIONAL_ARGUMENTS.get(name, {})
    extra = sorted(set(document) - set(spec) - set(optional))
    if extra:
        expected = ", ".join([*spec, *optional]) or "no arguments"
        raise ApiError(
            400, f"unknown argument(s) {', '.join(extra)}; {name!r} takes {expected}", reason="bad_body"
        )
    for key, allowed in [*spec.items(), *optional.items()]:
        if key not in document:
            if key in optional:
                continue
            raise ApiError(400, f"{name!r} needs {key!r}", reason="bad_body")
        value = document[key]
        if isinstance(allowed, tuple):
            if value not in allowed:
                raise ApiError(
                    400, f"{key} must be one of {', '.join(allowed)} (got {value!r})", reason="bad_body"
                )
        elif not isinstance(value, allowed) or (isinstance(value, str) and not value):
            raise ApiError(
                400, f"{key} must be a non-empty {allowed.__name__} (got {value!r})", reason="bad_body"
            )
    return document


class _CameraCache:
    """One JPEG shared by every caller for CAMERA_MAX_AGE_S; encoded off the event loop."""

    def __init__(self, snapshot: Callable[[], bytes | None]) -> None:
        self._snapshot = snapshot
        self._lock = asyncio.Lock()
        self._taken_at_s = float("-inf")
        self._jpeg: bytes | None = None

    async def get(self) -> bytes | None:
        async with self._lock:
            now_s = time.monotonic()
            if now_s - self._taken_at_s >= CAMERA_MAX_AGE_S:
                self._jpeg = await asyncio.to_thread(self._snapshot)
                self._taken_at_s = now_s
            return self._jpeg


class _CommandRunner:
    """Runs one command at a time on a worker thread; a second one meanwhile is refused, not queued."""

    def __init__(
        self, commands: Mapping[str, CommandHandler], after_command: Callable[[], None] | None
    ) -> None:
        self._commands = dict(commands)
        self._after_command = after_command
        self._busy = threading.Lock()
        self._running: set[asyncio.Task[dict[str, Any]]] = set()

    @property
    def names(self) -> list[str]:
        return list(self._commands)

    async def run(self, name: str, arguments: dict[str, Any], caller: str) -> dict[str, Any]:
        handler = self._commands[name]
        if not self._busy.acquire(blocking=False):
            raise ApiError(409, "another command is still running; retry when it has finished", reason="busy")

        def call() -> dict[str, Any]:
            CALLER.set(f"http:{caller}")  # this worker thread's own context (asyncio.to_thread copies it)
            try:
                result = handler(arguments)
            except RecycleXError as error:
                log.warning("command %s %s from %s refused: %s", name, arguments, caller, error)
                raise
            except Exception:
                log.exception("command %s %s from %s failed", name, arguments, caller)
                raise
            finally:
                self._busy.release()
            log.info("command %s %s from %s done", name, arguments, caller)
            if self._after_command is not None:
                self._after_command()
            return result

        # Shielded: a client that goes away does not cancel a servo test halfway; the thread that ran the
        # command releases the lock whenever it finishes, and the task is kept until then.
        task = asyncio.ensure_future(asyncio.to_thread(call))
        self._running.add(task)
        task.add_done_callback(_forget(self._running))
        try:
            return await asyncio.shield(task)
        except RecycleXError as error:
            raise ApiError(409, f"{name} failed: {error}", reason="command_failed") from None


def _forget(running: set[asyncio.Task[dict[str, Any]]]) -> Callable[[asyncio.Task[dict[str, Any]]], None]:
    def done(task: asyncio.Task[dict[str, Any]]) -> None:
        running.discard(task)
        if not task.cancelled():
            task.exception()  # already logged by the worker; nobody may be awaiting it any more

    return done


def add_technician_page(
    app: web.Application,
    *,
    history: History,
    commands: Mapping[str, CommandHandler],
    state: Callable[[], dict[str, Any]],
    camera_snapshot: Callable[[], bytes | None],
    detector_state: Callable[[], str],
    after_command: Callable[[], None] | None = None,
) -> None:
    """Register the page, its assets and its API on `app` (before the app's runner is set up).

    `commands` are the handlers MQTT runs; `after_command` is called after each one that succeeded (the
    MQTT bridge's `state_changed`, so the retained state follows a change made from the page).
    """
    config = app[CONFIG]
    auth = config.http.auth
    page = _read_asset("index.html")
    assets = {name: _read_asset(name) for name in _ASSETS}
    camera = _CameraCache(camera_snapshot)
    runner = _CommandRunner(commands, after_command)
    routes = web.RouteTableDef()

    @routes.get("/")
    async def index(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS)

    @routes.get("/static/{name}")
    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in assets:
            raise ApiError(404, f"no such file: /static/{name}", reason="not_found")
        return web.Response(
            body=assets[name],
            content_type=_ASSETS[name],
            charset="utf-8",
            headers={hdrs.CACHE_CONTROL: "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    @routes.get("/api/state")
    async def api_state(request: web.Request) -> web.Response:
        current, detector = await asyncio.to_thread(lambda: (state(), detector_state()))
        identity = request[IDENTITY]
        authenticator = request.app[AUTHENTICATOR]
        device = config.device
        body = {
            **current,
            "detector": detector,
            "device": {"id": device.id, "name": device.name, "location": device.location},
            "categories": list(config.sorter.bins),
            "modes": list(MODES),
            "commands": runner.names,
            "auth": {
                "enabled": authenticator.enabled,
                "subject": identity.subject,
                "scopes": sorted(identity.scopes),
                "admin": identity.allows("admin") or not authenticator.enabled,
                "problem": identity.problem,
            },
        }
        return web.json_response(body, headers={hdrs.CACHE_CONTROL: "no-store"})

    @routes.get("/api/history")
    async def api_history(request: web.Request) -> web.Response:
        body = {"events": history.events(), "series": history.series()}
        return web.json_response(body, headers={hdrs.CACHE_CONTROL: "no-store"})

    @routes.get("/api/events/{event_id}/thumbnail.jpg")
    async def thumbnail(request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        jpeg = history.thumbnail(event_id)
        if jpeg is None:
            raise ApiError(
                404,
                f"no thumbnail for event {event_id}: only the last {history.max_events} events keep one",
                reason="not_found",
            )
        return web.Response(
            body=jpeg, content_type="image/jpeg", headers={hdrs.CACHE_CONTROL: "private, max-age=3600"}
        )

    @routes.get("/api/camera.jpg")
    async def camera_view(request: web.Request) -> web.Response:
        jpeg = await camera.get()
        if jpeg is None:
            raise ApiError(
                503,
                "no camera frame yet; see the camera component in GET /health",
                reason="no_frame",
                headers={hdrs.RETRY_AFTER: "2"},
            )
        return web.Response(body=jpeg, content_type="image/jpeg", headers={hdrs.CACHE_CONTROL: "no-store"})

    @routes.post("/api/commands/{name}")
    async def command(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in runner.names:
            raise ApiError(
                404, f"no command {name!r}; this bin accepts: {', '.join(runner.names)}", reason="not_found"
            )
        if request.content_type != "application/json":
            # Also what keeps a web page elsewhere from posting here: JSON needs a CORS preflight.
            raise ApiError(
                415,
                "send the arguments as a JSON object with 'Content-Type: application/json' ({} for none)",
                reason="unsupported_media",
            )
        if (request.content_length or 0) > MAX_PAYLOAD_BYTES:
            raise ApiError(413, f"a command body is at most {MAX_PAYLOAD_BYTES} bytes", reason="too_large")
        body = await request.read()
        if len(body) > MAX_PAYLOAD_BYTES:
            raise ApiError(413, f"a command body is at most {MAX_PAYLOAD_BYTES} bytes", reason="too_large")
        caller = request[IDENTITY].subject or request[CLIENT]
        result = await runner.run(name, _arguments(name, body), caller)
        return web.json_response({"ok": True, "command": name, "result": result})

    app.add_routes(routes)
    public = RoutePolicy(None, True, "other")
    like_health = RoutePolicy(None, auth.public_health, "other")
    any_token = RoutePolicy(None, False, "other")
    app[ROUTE_POLICIES].update(
        {
            "/": public,
            "/static/{name}": public,
            "/api/state": like_health,
            "/api/history": like_health,
            "/api/events/{event_id}/thumbnail.jpg": any_token,
            "/api/camera.jpg": any_token,
            "/api/commands/{name}": RoutePolicy("admin", False, "other"),
        }
    )
