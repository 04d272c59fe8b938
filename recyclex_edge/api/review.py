"""The Review API: captured items to label, their photos, and the label a person gives each.

- `GET /api/captures?labelled=&limit=&before=`: items newest first, with counts, backlog, adaptation;
- `GET /api/captures/{event_id}/image.jpg`: the item's photo as the camera took it;
- `PUT /api/captures/{event_id}/label`: `{"label": "glass"}`; `{"label": null}` takes it back (undo).

All need the `label` scope (or `admin`): the photos may show a passer-by. Handlers parse, call
`FieldLearning` off the event loop, and serialise.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import hdrs, web

from recyclex_edge.api.auth import RoutePolicy
from recyclex_edge.api.errors import ApiError, query_value
from recyclex_edge.api.keys import CLIENT, IDENTITY, ROUTE_POLICIES
from recyclex_edge.errors import RecycleXError
from recyclex_edge.fieldlearning import CaptureError, FieldLearning

MAX_LIMIT = 200
_MAX_BODY_BYTES = 1024


def _flag(request: web.Request, name: str) -> bool | None:
    value = query_value(request, name)
    if value is None or value == "":
        return None
    if value in ("true", "false"):
        return value == "true"
    raise ApiError(400, f"{name} must be 'true' or 'false' (got {value!r})", reason="bad_query")


def _limit(request: web.Request) -> int:
    raw = query_value(request, "limit")
    raw = "50" if raw is None else raw
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(
            400, f"limit must be a whole number from 1 to {MAX_LIMIT} (got {raw!r})", reason="bad_query"
        )
    return int(raw)


def _unavailable(error: RecycleXError) -> ApiError:
    return ApiError(503, f"{error}; see the capture component in GET /health", reason="capture_unavailable")


async def _label_body(request: web.Request) -> str | None:
    if request.content_type != "application/json":
        raise ApiError(
            415, 'send {"label": "<class>"} with Content-Type: application/json', reason="unsupported_media"
        )
    body = await request.content.read(_MAX_BODY_BYTES + 1)
    if len(body) > _MAX_BODY_BYTES:
        raise ApiError(413, f"a label body is at most {_MAX_BODY_BYTES} bytes", reason="too_large")
    try:
        document: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}", reason="bad_body") from None
    if not isinstance(document, dict) or set(document) != {"label"}:
        raise ApiError(
            400, 'the body must be exactly {"label": "<class>"} (or null to undo)', reason="bad_body"
        )
    label = document["label"]
    if label is not None and (not isinstance(label, str) or not label):
        raise ApiError(400, f"label must be a non-empty string or null (got {label!r})", reason="bad_body")
    return label


def add_review_api(app: web.Application, site: FieldLearning) -> None:
    """Register the Review routes on `app` (before its runner is set up)."""
    routes = web.RouteTableDef()

    @routes.get("/api/captures")
    async def captures(request: web.Request) -> web.Response:
        labelled, limit = _flag(request, "labelled"), _limit(request)
        before = query_value(request, "before") or None
        store = site.store

        def read() -> dict[str, Any]:
            summary = site.summary()
            items = store.items(labelled=labelled, limit=limit, before=before) if store is not None else []
            return {"items": [item.as_dict() for item in items], **summary}

        try:
            body = await asyncio.to_thread(read)
        except CaptureError as error:
            raise _unavailable(error) from None
        return web.json_response(body, headers={hdrs.CACHE_CONTROL: "no-store"})

    @routes.get("/api/captures/{event_id}/image.jpg")
    async def image(request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        store = site.store
        if store is None:
            raise _unavailable(RecycleXError("the capture store is not available"))
        try:
            jpeg = await asyncio.to_thread(store.image, event_id)
        except CaptureError as error:
            raise _unavailable(error) from None
        if jpeg is None:
            raise ApiError(
                404, f"no captured item {event_id!r}; it may have been evicted", reason="not_found"
            )
        return web.Response(
            body=jpeg, content_type="image/jpeg", headers={hdrs.CACHE_CONTROL: "private, max-age=3600"}
        )

    @routes.put("/api/captures/{event_id}/label")
    async def label(request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        value = await _label_body(request)
        if value is not None and value not in site.label_names:
            raise ApiError(
                400,
                f"unknown label {value!r}; expected one of: {', '.join(site.label_names)}",
                reason="bad_body",
            )
        caller = request[IDENTITY].subject or request[CLIENT]
        try:
            item = await asyncio.to_thread(site.set_label, event_id, value, by=caller)
        except LookupError as error:
            raise ApiError(404, str(error), reason="not_found") from None
        except RecycleXError as error:
            raise _unavailable(error) from None
        return web.json_response(item.as_dict())

    app.add_routes(routes)
    needs_label = RoutePolicy("label", False, "other")
    app[ROUTE_POLICIES].update(
        {
            "/api/captures": needs_label,
            "/api/captures/{event_id}/image.jpg": needs_label,
            "/api/captures/{event_id}/label": needs_label,
        }
    )
