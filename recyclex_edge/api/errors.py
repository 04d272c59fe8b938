"""Every refusal is a JSON answer: `{"error", "code", "timestamp"}`, never a stack trace.

Handlers and middlewares raise `ApiError` with a message that says what is wrong and what to do; the
error middleware also turns aiohttp's own exceptions (404, 405, 413 ...) and unexpected ones into the
same shape, logging the latter with their traceback on the server only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("recyclex_edge.api")

# Messages for the statuses aiohttp raises itself, phrased for the person reading the answer.
_AIOHTTP_MESSAGES = {
    400: "the request is malformed; check its headers and body",
    404: "no such endpoint; GET /openapi.json lists them",
    405: "method not allowed on this endpoint; see the Allow header",
    413: "the request body is larger than this endpoint accepts",
    415: "unsupported content type",
}


# Statuses any request may get before it reaches a route: from the connection guard (api/guard.py), the
# Host check and aiohttp's parser. /openapi.json lists them on every operation.
TRANSPORT_ERRORS: dict[int, str] = {
    400: "not valid HTTP/1.1, or (auth off) a Host name the bin does not answer to",
    408: "the request line and headers did not arrive within http.connections.header_timeout_s",
    429: "this address holds http.connections.max_per_client busy connections",
    431: "the request line and headers exceed http.connections.max_header_bytes",
    503: "the bin holds http.connections.max_total busy connections, or too many unfinished heads",
}

# Echoed request parts (a path, a field name) are clipped to this, so an answer stays small.
MAX_ECHO_CHARS = 100


def clip(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """At most `limit` characters, saying how many more there were."""
    return text if len(text) <= limit else f"{text[:limit]}...(+{len(text) - limit} chars)"


def query_value(request: web.Request, name: str) -> str | None:
    """The query parameter `name`, or None when absent; each is singular, so one given twice is a 400."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, f"give {clip(name, 40)} once (it came {len(values)} times)", reason="bad_query")
    return values[0] if values else None


# Set on the request when an ApiError answered it, for the `rejected` metric.
REJECTED_REASON = web.RequestKey("rejected_reason", str)


class ApiError(Exception):
    """A deliberate refusal. `reason` is a short slug counted in the `rejected` metric."""

    def __init__(
        self, status: int, message: str, *, reason: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = dict(headers or {})


def error_body(status: int, message: str) -> dict[str, object]:
    return {
        "error": message,
        "code": status,
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(error_body(status, message)),
        content_type="application/json",
        headers=headers,
    )


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> web.Response:
    message = _AIOHTTP_MESSAGES.get(exc.status, exc.reason)
    if exc.status == 404:
        message = (
            f"no such endpoint: {clip(request.method, 20)} {clip(request.path)}; GET /openapi.json lists them"
        )
    elif exc.status == 405 and isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"{clip(request.method, 20)} is not allowed on {clip(request.path)}; use {allowed}"
    # Keep the headers that tell the client what to do (Allow, Retry-After ...), not the body's.
    headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
    return error_response(exc.status, message, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        request[REJECTED_REASON] = error.reason
        return error_response(error.status, error.message, error.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc, request)
    except Exception:
        log.exception("unexpected error answering %s %s", clip(request.method, 20), clip(request.path))
        return error_response(500, "internal error; it has been logged on the bin, try again or report it")
