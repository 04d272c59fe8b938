"""The request pipeline, outermost first: observe -> CORS -> errors -> host -> guard -> deadline -> handler.

`observe` sees the final status of everything (metrics, the access log's client); CORS headers go on
error answers too, so a browser can read them; the guard identifies the caller, applies the rate limit,
then the route's scope, in that order, so failed logins are rate limited as well.
"""

from __future__ import annotations

import asyncio
import socket
import time
from ipaddress import ip_address

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from recyclex_edge.api.errors import REJECTED_REASON, ApiError, clip, error_response
from recyclex_edge.api.keys import (
    ALLOWED_HOSTS,
    AUTHENTICATOR,
    CLIENT,
    CONFIG,
    IDENTITY,
    METRICS,
    RATE_LIMITER,
    ROUTE_POLICIES,
)

UNMATCHED_ROUTE = "unmatched"
_REALM = 'Bearer realm="recyclex-edge"'


def route_template(request: web.Request) -> str:
    """The route's template (bounded cardinality for metrics), not the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def client_address(request: web.Request) -> str:
    """The peer address, or the client named by X-Forwarded-For when the peer is a trusted proxy.

    The header is read right to left, skipping our own proxies, so a client cannot spoof its address by
    sending its own X-Forwarded-For through them.
    """
    remote = request.remote or "unknown"
    proxies = request.app[CONFIG].http.trusted_proxies
    if not proxies:
        return remote

    def trusted(address: str) -> bool:
        try:
            parsed = ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in proxies)

    if not trusted(remote):
        return remote
    hops = [hop.strip() for hop in request.headers.get(hdrs.X_FORWARDED_FOR, "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else remote


@web.middleware
async def observe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[CLIENT] = client_address(request)
    metrics = request.app[METRICS]
    route = route_template(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # only non-error statuses get past the error middleware
        status = exc.status
        raise
    finally:
        metrics.requests.labels(route, request.method, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        reason = request.get(REJECTED_REASON)
        if reason is not None:
            metrics.rejected.labels(route, reason).inc()


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    origins = request.app[CONFIG].http.cors_origins
    origin = request.headers.get(hdrs.ORIGIN)
    allowed = origin is not None and (origin in origins or "*" in origins)
    if (
        request.method == hdrs.METH_OPTIONS
        and origin
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    ):
        if not allowed:
            return error_response(403, f"origin {clip(origin)} is not allowed; add it to http.cors_origins")
        return web.Response(
            status=204,
            headers={
                hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: origin,
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: "GET, POST",
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: "Authorization, Content-Type",
                hdrs.ACCESS_CONTROL_MAX_AGE: "600",
                hdrs.VARY: "Origin",
            },
        )
    response = await handler(request)
    if allowed and origin is not None and not response.prepared:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = "Retry-After, WWW-Authenticate"
        response.headers.add(hdrs.VARY, "Origin")
    return response


WEBSOCKET_BEARER_PREFIX = "bearer."


def websocket_protocol_token(request: web.Request) -> str | None:
    """The `bearer.<token>` subprotocol a browser offered, if any.

    Browsers cannot put an Authorization header on a WebSocket; offering the token as a subprotocol
    (`new WebSocket(url, ["bearer." + token])`) is the usual way round, and the server must echo it back.
    """
    for offered in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(","):
        offered = offered.strip()
        if offered.startswith(WEBSOCKET_BEARER_PREFIX) and len(offered) > len(WEBSOCKET_BEARER_PREFIX):
            return offered
    return None


def websocket_bearer(request: web.Request) -> str | None:
    """An Authorization header value made from the WebSocket subprotocol token, for the same checks."""
    offered = websocket_protocol_token(request)
    return None if offered is None else "Bearer " + offered[len(WEBSOCKET_BEARER_PREFIX) :]


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    authenticator = app[AUTHENTICATOR]
    identity = authenticator.identify(request.headers.get(hdrs.AUTHORIZATION) or websocket_bearer(request))
    request[IDENTITY] = identity
    policy = app[ROUTE_POLICIES].get(route_template(request))
    if app[CONFIG].http.rate_limit.enabled:
        # Unknown paths spend the 'other' budget too: a flood of them costs a 429, not a 404 each.
        bucket = policy.bucket if policy is not None else "other"
        retry_after_s = app[RATE_LIMITER].retry_after_s(identity.subject or request[CLIENT], bucket)
        if retry_after_s:
            raise ApiError(
                429,
                f"too many requests to {clip(request.path)}; retry in {retry_after_s} s",
                reason="rate_limited",
                headers={hdrs.RETRY_AFTER: str(retry_after_s)},
            )
    if policy is None:  # unknown path or method: the router answers 404/405
        return await handler(request)
    if authenticator.enabled and not policy.public and not identity.allows(policy.scope):
        if identity.subject is None:
            challenge = _REALM + (', error="invalid_token"' if identity.problem else "")
            raise ApiError(
                401,
                identity.problem or "this endpoint needs 'Authorization: Bearer <token>'",
                reason="unauthorized",
                headers={hdrs.WWW_AUTHENTICATE: challenge},
            )
        raise ApiError(
            403,
            f"the token lacks the '{policy.scope}' scope this endpoint needs; ask for a token with it",
            reason="forbidden",
            headers={hdrs.WWW_AUTHENTICATE: f'{_REALM}, error="insufficient_scope", scope="{policy.scope}"'},
        )
    return await handler(request)


@web.middleware
async def deadline_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A deadline for every plain HTTP request; a WebSocket session lives as long as its heartbeat says."""
    if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
        return await handler(request)
    timeout_s = request.app[CONFIG].http.request_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await handler(request)
    except TimeoutError:
        raise ApiError(
            503,
            f"the request took longer than {timeout_s:g} s; retry later",
            reason="deadline",
            headers={hdrs.RETRY_AFTER: "5"},
        ) from None


def _host_name(host: str) -> str:
    """'Example.org.:8080' -> 'example.org'; '[::1]:8080' -> '::1'."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".").lower()


def allowed_host_names(configured: list[str]) -> frozenset[str]:
    """The names a bin answers to with auth off: configured ones, localhost and its own hostname."""
    hostname = socket.gethostname().lower()
    return frozenset({"localhost", hostname, f"{hostname}.local", *(name.lower() for name in configured)})


def host_allowed(host: str | None, names: frozenset[str]) -> bool:
    """IP literals always pass (DNS rebinding needs a name that resolves to us); names must be known."""
    if not host or "*" in names:
        return True
    name = _host_name(host)
    try:
        ip_address(name)
    except ValueError:
        return name in names or name.endswith(".localhost")
    return True


@web.middleware
async def host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With auth off, a page on another site could rebind its name to the bin's address and use the API
    from the visitor's browser; such requests carry that site's name in Host, so unknown names are refused.
    With auth on a request needs a token the page cannot have, so there is nothing to check."""
    if not request.app[AUTHENTICATOR].enabled and not host_allowed(
        request.headers.get(hdrs.HOST), request.app[ALLOWED_HOSTS]
    ):
        raise ApiError(
            400,
            f"this bin does not answer to the name {clip(request.headers.get(hdrs.HOST, ''), 60)!r}; "
            "use its address, or add the name to http.allowed_hosts",
            reason="bad_host",
        )
    return await handler(request)


def websocket_origin_allowed(request: web.Request) -> bool:
    """A browser's WebSocket carries Origin and is not bound by CORS: accept the bin's own page and the
    configured origins only. Clients that are not browsers send no Origin and are not affected."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    origins = request.app[CONFIG].http.cors_origins
    if origin in origins or "*" in origins:
        return True
    host = request.headers.get(hdrs.HOST)
    return host is not None and origin in (f"http://{host}", f"https://{host}")
