"""Caps that hold whoever connects, before any token is checked: a small guard in aiohttp's protocol.

aiohttp bounds one header line (8190 bytes) and the number of headers (128), and closes idle keep-alive
connections, but a client may open as many connections as the process has files, take as long as it
likes to send a request head, and hold ~1 MB of headers on every connection. `GuardedRequestHandler`
(aiohttp's `RequestHandler` with a few hooks) and `ConnectionGuard` (the bookkeeping shared by all
connections) add what is missing:

- connections in total and per client address. At a cap the longest-idle connection (no request in
  progress: nothing sent yet, a keep-alive pause, or an unfinished head) is closed to make room, so a
  flood of idle connections displaces itself and a real request still gets in; only when every
  connection is busy is the new one refused (429 for one address, 503 for the bin);
- a deadline for the request head, from its first byte (408), and a byte budget for it, per request
  (431) and across all connections (503);
- JSON answers for what aiohttp's parser refuses (400/431 instead of text/plain echoing the input), logged
  as one line without a traceback (the traceback quoted the start of the headers, bearer token included).

The body has its own limits: uploads are read with `http.read_timeout_s` and their size caps, and a body
no handler reads is drained by aiohttp for at most 10 s (its lingering time) before the connection closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections import Counter
from http import HTTPStatus
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from recyclex_edge.api.access_log import ACCESS_LOG, AccessLogger
from recyclex_edge.api.errors import error_body, error_response
from recyclex_edge.config.connections import ConnectionsConfig
from recyclex_edge.config.http import HttpConfig

log = logging.getLogger("recyclex_edge.api.guard")


def raw_error_response(status: int, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 answer with the JSON error body, written straight to a transport."""
    body = json.dumps(error_body(status, message)).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def handler_options(http: HttpConfig) -> dict[str, Any]:
    """The options for aiohttp's runner and for our handlers, the same for both."""
    return {
        "access_log_class": AccessLogger,
        "access_log": ACCESS_LOG,
        "keepalive_timeout": http.keepalive_timeout_s,
    }


# Files the daemon holds besides HTTP connections: the model, camera and GPIO devices, SQLite and its
# journal, the MQTT socket, pipes of threads and the event loop, and connections the kernel queued for
# accept() (the backlog) before the guard can close them.
FILES_BESIDES_CONNECTIONS = 384


def files_needed(config: ConnectionsConfig) -> int:
    return config.max_total + FILES_BESIDES_CONNECTIONS


def ensure_file_limit(config: ConnectionsConfig) -> None:
    """Raise the soft limit on open files to what the caps need (up to the hard limit), or say why not.

    With too few files the connections' cap is never reached: accept() fails first, asyncio logs it in
    a loop, and the camera cannot open photos.
    """
    needed = files_needed(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning(
            "only %d open files are allowed (hard limit), the HTTP caps need %d "
            "(http.connections.max_total + %d); raise LimitNOFILE= or lower the cap",
            target,
            needed,
            FILES_BESIDES_CONNECTIONS,
        )


class ConnectionGuard:
    """The caps' bookkeeping, shared by every connection of one listening socket (event loop only)."""

    def __init__(self, config: ConnectionsConfig) -> None:
        self.config = config
        self._open: dict[GuardedRequestHandler, str] = {}
        self._per_client: Counter[str] = Counter()
        # Idle connections, least recently idle first (dicts keep insertion order).
        self._idle: dict[GuardedRequestHandler, None] = {}
        self._idle_by_client: dict[str, dict[GuardedRequestHandler, None]] = {}
        self.head_bytes = 0
        self.refused: Counter[str] = Counter()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def connections_of(self, client: str) -> int:
        return self._per_client[client]

    def admit(self, handler: GuardedRequestHandler, client: str) -> tuple[int, str] | None:
        """Register a new connection, closing idle ones to make room; a refusal (status, message) if full."""
        if self._per_client[client] >= self.config.max_per_client:
            victim = next(iter(self._idle_by_client.get(client, {})), None)
            if victim is None:
                return 429, (
                    f"this address has {self._per_client[client]} connections open, the limit per client; "
                    "reuse one (keep-alive) or close some"
                )
            self._evict(victim, "per_client")
        if len(self._open) >= self.config.max_total:
            victim = next(iter(self._idle), None)
            if victim is None:
                return 503, (
                    f"the bin has {len(self._open)} connections open, its limit; retry in a few seconds"
                )
            self._evict(victim, "total")
        self._open[handler] = client
        self._per_client[client] += 1
        return None

    def _evict(self, victim: GuardedRequestHandler, cap: str) -> None:
        self.refused[f"evicted_{cap}"] += 1
        self.release(victim)
        victim.evict()

    def release(self, handler: GuardedRequestHandler) -> None:
        """Forget a connection (closed or evicted); safe to call twice."""
        self.set_busy(handler)
        client = self._open.pop(handler, None)
        if client is None:
            return
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]

    def set_idle(self, handler: GuardedRequestHandler) -> None:
        client = self._open.get(handler)
        if client is None:
            return
        self._idle.pop(handler, None)
        self._idle[handler] = None
        by_client = self._idle_by_client.setdefault(client, {})
        by_client.pop(handler, None)
        by_client[handler] = None

    def set_busy(self, handler: GuardedRequestHandler) -> None:
        self._idle.pop(handler, None)
        client = self._open.get(handler)
        if client is None:
            return
        by_client = self._idle_by_client.get(client)
        if by_client is not None:
            by_client.pop(handler, None)
            if not by_client:
                del self._idle_by_client[client]

    def refuse(self, reason: str, client: str, status: int) -> None:
        self.refused[reason] += 1
        log.warning("refused a connection from %s with %d: %s", client, status, reason)


def _parser_refusal(exc: BaseException | None, max_line_bytes: int) -> tuple[int, str]:
    """What to answer for an exception of aiohttp's parser, never quoting the input."""
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc.message)
    ):
        return 431, (
            f"the request line or a header is longer than {max_line_bytes} bytes, or there are too many "
            "headers; send fewer or shorter headers"
        )
    return 400, "the request is not valid HTTP/1.1; check its request line and headers"


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol with the guard's hooks: admission, the head's deadline and bytes, JSON errors."""

    __slots__ = ("_client", "_draining", "_guard", "_head_bytes", "_head_timer", "_waiting_for_head")

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._client = "unknown"
        self._waiting_for_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._draining: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if peer else "unknown"
        refusal = self._guard.admit(self, self._client)
        if refusal is not None:
            status, message = refusal
            self._guard.refuse("too_many_connections", self._client, status)
            self._refuse(status, message, {hdrs.RETRY_AFTER: "5"})
            return
        self._guard.set_idle(self)
        # A connection that never sends anything is closed like one that sends too slowly.
        self._start_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_waiting_for_head()
        self._guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining is not None and self._draining.is_eof():
            self._draining = None
            self._become_idle()
        if not self._waiting_for_head:
            super().data_received(data)
            return
        if self._head_timer is None:  # the first byte after a keep-alive pause starts the clock
            self._start_head_timer()
        heads_before = self._request_count
        super().data_received(data)
        if self._request_count > heads_before:  # the parser finished a head (or refused one)
            self._stop_waiting_for_head()
            self._waiting_for_head = False
            self._guard.set_busy(self)
            return
        self._head_bytes += len(data)
        self._guard.head_bytes += len(data)
        if self._head_bytes > self._guard.config.max_header_bytes:
            self._guard.refuse("head_too_large", self._client, 431)
            self._refuse(
                431,
                f"the request line and headers exceed {self._guard.config.max_header_bytes} bytes; "
                "send fewer or shorter headers",
            )
        elif self._guard.head_bytes > self._guard.config.max_total_header_bytes:
            self._guard.refuse("heads_total", self._client, 503)
            self._refuse(
                503,
                "the bin is receiving too many request headers at once; retry in a few seconds",
                {hdrs.RETRY_AFTER: "5"},
            )

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        super().log_access(request, response, time)
        # The request is answered. Bytes from now on belong to the next head, unless aiohttp still
        # drains a body the handler did not read.
        if request.content.is_eof():
            self._become_idle()
        else:
            self._draining = request.content

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("unexpected error answering a request from %s", self._client, exc_info=exc)
            text = "internal error; it has been logged on the bin, try again or report it"
        else:
            status, text = _parser_refusal(exc, self.max_field_size)
            self._guard.refused[f"parser_{status}"] += 1
            # One line and the exception's class only: its message quotes the request's bytes.
            log.info(
                "refused a malformed request from %s with %d: %s", self._client, status, type(exc).__name__
            )
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already being sent; the connection is closed instead")
        response = error_response(status, text)
        response.force_close()
        return response

    def evict(self) -> None:
        """Closed by the guard to make room for a new connection; it had no request in progress."""
        self._stop_waiting_for_head()
        self.force_close()

    def _become_idle(self) -> None:
        self._waiting_for_head = True
        self._guard.set_idle(self)

    def _start_head_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._guard.config.header_timeout_s, self._head_timed_out)

    def _stop_waiting_for_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._guard.head_bytes -= self._head_bytes
        self._head_bytes = 0

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._waiting_for_head:
            return
        self._guard.refuse("head_timeout", self._client, 408)
        self._refuse(
            408,
            f"the request line and headers did not arrive within {self._guard.config.header_timeout_s:g} s; "
            "send them at once",
        )

    def _refuse(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._stop_waiting_for_head()
        self._waiting_for_head = False
        self._guard.release(self)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(raw_error_response(status, message, headers))
        self.force_close()


class GuardedSite(web.BaseSite):
    """A TCP listening socket whose connections go through `GuardedRequestHandler`.

    `handler_kwargs` are the options aiohttp's runner passes to its own handlers (access log, keep-alive
    timeout ...); aiohttp has no public hook for the protocol class, so the site makes the handlers itself.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        handler_kwargs: dict[str, Any],
        *,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard
        self._handler_kwargs = handler_kwargs
        self.bound_port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None, "call runner.setup() before starting the site"

        def protocol() -> GuardedRequestHandler:
            return GuardedRequestHandler(server, self._guard, loop=loop, **self._handler_kwargs)

        self._server = await loop.create_server(protocol, self._host, self._port, backlog=self._backlog)
        if self._server.sockets:
            self.bound_port = int(self._server.sockets[0].getsockname()[1])
