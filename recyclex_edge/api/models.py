"""The model registry over HTTP (admin scope): list, upload, activate, roll back, remove.

| route | what |
|---|---|
| `GET /api/models` | every version, the watch, the shadow run, the last rollback, the audit log |
| `POST /api/models[?shadow=true]` | the package as the body (octet-stream, or multipart field `file`) |
| `POST /api/models/{version}/activate` | make an installed version active (promotes a shadow candidate) |
| `POST /api/models/rollback` | back to the version active before this one |
| `DELETE /api/models/{version}` | delete an installed version that is not active |

The work runs off the event loop in the registry, one operation at a time; a refusal is a 409 (or 400
for a package that is not valid) with the registry's reason, and is in the audit log like a success.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import hdrs, web

from recyclex_edge.api.auth import RoutePolicy
from recyclex_edge.api.errors import ApiError, query_value
from recyclex_edge.api.keys import CLIENT, CONFIG, IDENTITY, ROUTE_POLICIES
from recyclex_edge.api.uploads import MemorySink, UploadKind, receive_upload
from recyclex_edge.errors import PackageError, RegistryError
from recyclex_edge.registry.package import MAGIC
from recyclex_edge.registry.service import ModelRegistry


def _who(request: web.Request) -> str:
    return f"http:{request[IDENTITY].subject or request[CLIENT]}"


async def _run(call: Any, *args: Any, **kwargs: Any) -> web.Response:
    try:
        result = await asyncio.to_thread(call, *args, **kwargs)
    except RegistryError as error:
        status = 400 if isinstance(error, PackageError) else 409
        raise ApiError(status, str(error), reason="model_refused") from None
    return web.json_response({"ok": True, **result})


def add_model_routes(app: web.Application, registry: ModelRegistry) -> None:
    """Register the model routes on `app` (before its runner is set up)."""
    config = app[CONFIG]
    package = UploadKind(
        what="a RecycleX model package (recyclex-edge model pack)",
        raw_types=frozenset({"application/octet-stream"}),
        max_bytes=config.model.max_package_bytes,
        check_head=lambda head: head.startswith(MAGIC),
        max_parts=config.http.max_multipart_parts,
    )

    routes = web.RouteTableDef()

    @routes.get("/api/models")
    async def listing(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(registry.summary)
        return web.json_response(body, headers={hdrs.CACHE_CONTROL: "no-store"})

    @routes.post("/api/models")
    async def upload(request: web.Request) -> web.Response:
        given = query_value(request, "shadow")
        shadow = "false" if given is None else given.lower()
        if shadow not in ("true", "false", "1", "0"):
            raise ApiError(400, f"shadow must be true or false (got {shadow!r})", reason="bad_query")
        # One package in memory at a time, uploaded or downloaded (up to model.max_package_bytes, held
        # up to three times over while it is joined, sliced and checked): memory stays bounded.
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(registry.transfer())
            except RegistryError as error:
                raise ApiError(503, str(error), reason="busy", headers={hdrs.RETRY_AFTER: "5"}) from None
            sink = MemorySink()
            await receive_upload(request, package, sink, config.http.read_timeout_s)
            source = f"upload ({sink.sha256()[:12]})"
            return await _run(
                registry.install,
                sink.data(),
                who=_who(request),
                source=source,
                shadow=shadow in ("true", "1"),
            )

    @routes.post("/api/models/rollback")
    async def rollback(request: web.Request) -> web.Response:
        return await _run(registry.rollback, who=_who(request))

    @routes.post("/api/models/{version}/activate")
    async def activate(request: web.Request) -> web.Response:
        return await _run(registry.activate, request.match_info["version"], who=_who(request))

    # 'rollback' is not a version: without the exclusion this route also matches /api/models/rollback,
    # and a wrong method there would be answered 405 with "Allow: DELETE, POST".
    @routes.delete("/api/models/{version:(?!rollback$)[^/]+}")
    async def remove(request: web.Request) -> web.Response:
        return await _run(registry.remove, request.match_info["version"], who=_who(request))

    app.add_routes(routes)
    admin = RoutePolicy("admin", False, "other")
    app[ROUTE_POLICIES].update(
        {
            "/api/models": admin,
            "/api/models/rollback": admin,
            "/api/models/{version}/activate": admin,
            "/api/models/{version}": admin,
        }
    )
