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

The body has its own limits: uploads are read with `http.read_timeout_s` and their size caps. A body
answered before it has all arrived (a 401, a 413 on its declared length ...) is drained by aiohttp, for at
most 10 s (its lingering time), so the connection can serve the next request; when more than
`DRAIN_MAX_BYTES` of it are still to come, or its length is unknown, the answer says `Connection: close`
instead and the connection closes once aiohttp has stopped reading it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
from collections import Counter
from http import HTTPStatus
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.http_parser import RawRequestMessage
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


# The most of an unread body worth receiving to keep its connection (Go's net/http drains as much).
DRAIN_MAX_BYTES = 256 * 1024


async def close_after_an_unread_body(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: an answer sent before a large rest of the body arrived closes the connection.

    aiohttp has already chosen the Connection header when this runs, so it is set here as well.
    """
    if request.content.is_eof():
        return
    length = request.content_length
    if length is None or length - request.content.total_bytes > DRAIN_MAX_BYTES:
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"


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


# The end of a head: a blank line, CR optional.
_BLANK_LINE = re.compile(rb"\n\r?\n")


class ChunkedBodyEnd:
    """Follows a chunked body's framing (size lines, data, trailers) to find where it ends.

    Chunk data is skipped by its size, never searched, so bytes in it that look like framing cost
    nothing; the work is per chunk, as aiohttp's own per chunk. Only where the body ends is wanted:
    aiohttp's parser still decides what the bytes mean.
    """

    _KEPT_LINE_BYTES = 64  # of a line cut between reads: the size's hex digits, or whether it is empty

    def __init__(self) -> None:
        self._line = b""  # the start of a size or trailer line that has not ended yet
        self._skip = 0  # bytes of chunk data, and the CRLF after it, still to come
        self._in_trailers = False
        self.malformed = False

    def end(self, data: bytes, start: int) -> int | None:
        """Just after the body's last byte if it is in data[start:], else None (then all of it is body)."""
        position, size = start, len(data)
        while position < size:
            if self._skip:
                step = min(self._skip, size - position)
                self._skip -= step
                position += step
                continue
            line_end = data.find(b"\n", position)
            if line_end < 0:
                self._line = (self._line + data[position : position + self._KEPT_LINE_BYTES])[
                    : self._KEPT_LINE_BYTES
                ]
                return None
            line = self._line + data[position : min(line_end, position + self._KEPT_LINE_BYTES)]
            self._line = b""
            position = line_end + 1
            if self._in_trailers:
                if not line.rstrip(b"\r"):
                    return position
                continue
            try:
                chunk = int(line.split(b";", 1)[0].strip(b" \t\r"), 16)
            except ValueError:
                self.malformed = True  # the parser refuses it too; its blank lines are looked for instead
                return None
            if chunk:
                self._skip = chunk + 2
            else:
                self._in_trailers = True
        return None


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol with the guard's hooks: admission, the head's deadline and bytes, JSON errors.

    Which bytes are a head is the parser's knowledge, not the requests': a keep-alive connection may
    carry the rest of a body nobody read (aiohttp drains it), pipelined requests, or a head split over
    segments, all in one read. So each read is fed to the parser in pieces that end where a message may
    end: after the Content-Length bytes of a body, after the last chunk of a chunked one, and after every
    blank line outside a body (the end of a head). Between pieces the parser's state is known, and a
    piece fed while no body is in progress is head bytes, all of it; it is counted before the parser
    sees it, so a head over the cap is refused before it is parsed or answered, however it arrives.
    """

    __slots__ = (
        "_body_bytes_left",
        "_chunked_end",
        "_client",
        "_guard",
        "_head_bytes",
        "_head_timer",
        "_last_bytes",
        "_parser_failed",
        "_payload",
        "_requests_seen",
        "_unanswered",
        "_unfed",
    )

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._client = "unknown"
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        # The body of the last request parsed while it is still arriving, and how many of its bytes are
        # still to come (Content-Length) or where it ends (chunked).
        self._payload: StreamReader | None = None
        self._body_bytes_left: int | None = None
        self._chunked_end: ChunkedBodyEnd | None = None
        self._last_bytes = b""  # the last two bytes fed, for a blank line split between reads
        self._unfed = b""  # what arrived while aiohttp held the parser back (a full body buffer or queue)
        self._requests_seen = 0
        self._unanswered = 0  # requests parsed and not yet answered
        self._parser_failed = False

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
        if self._passed_through():
            super().data_received(data)
            return
        pending, self._unfed = self._unfed + data, b""
        if not data:  # aiohttp resuming: the parser first takes what it held back itself
            self._feed(b"")
        position = 0
        while position < len(pending):
            if self._force_close or self._close:
                return
            if self._passed_through():
                super().data_received(pending[position:])
                return
            if self._held_back():
                self._unfed = pending[position:]
                return
            end = self._piece_end(pending, position)
            if not self._feed(pending[position:end]):
                return
            position = end

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        super().log_access(request, response, time)
        self._unanswered = max(0, self._unanswered - 1)
        if not self._unanswered and not self._in_body():
            self._guard.set_idle(self)

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

    def _passed_through(self) -> bool:
        """After an upgrade (WebSocket) or a malformed head there are no more heads to measure."""
        return self._upgraded or self._payload_parser is not None or self._parser_failed

    def _held_back(self) -> bool:
        """aiohttp paused reading: a body's buffer is full, or the queue of pipelined requests is."""
        return self._reading_paused or len(self._messages) >= self._max_msg_queue_size

    def _in_body(self) -> bool:
        return self._payload is not None and not self._payload.is_eof()

    def _piece_end(self, data: bytes, start: int) -> int:
        """Where the next piece to feed ends: the most bytes after which the parser's state is known."""
        if self._in_body():
            left, chunked = self._body_bytes_left, self._chunked_end
            if left is not None and left > 0:
                return min(len(data), start + left)
            if chunked is not None and not chunked.malformed:
                end = chunked.end(data, start)
                if end is None:
                    return len(data)
                self._chunked_end = None  # should the parser not agree, blank lines are looked for
                return end
        before = (self._last_bytes + data[max(0, start - 2) : start])[-2:]
        straddling = (match.end() for match in _BLANK_LINE.finditer(before + data[start : start + 2]))
        end = next((start + e - len(before) for e in straddling if e > len(before)), None)
        if end is not None:
            return end
        match = _BLANK_LINE.search(data, start)
        return match.end() if match else len(data)

    def _feed(self, piece: bytes) -> bool:
        """Count a head's piece, hand it to aiohttp, then read the parser's state; False if refused."""
        in_body = self._in_body()
        if piece and not in_body and not self._count_head_bytes(len(piece)):
            return False
        super().data_received(piece)
        if piece and not self._held_back():
            # A pause the back-pressure has already lifted: what the parser kept goes through now,
            # so its state is that of the whole piece.
            super().data_received(b"")
        if in_body and self._body_bytes_left is not None:
            self._body_bytes_left -= len(piece)
        self._note_new_requests()
        if in_body and not self._in_body():  # the body has all arrived: idle if it was answered
            self._payload = None
            if not self._unanswered:
                self._guard.set_idle(self)
        self._last_bytes = (self._last_bytes + piece[-2:])[-2:]
        return True

    def _count_head_bytes(self, count: int) -> bool:
        config = self._guard.config
        if self._head_bytes + count > config.max_header_bytes:
            self._guard.refuse("head_too_large", self._client, 431)
            self._refuse(
                431,
                f"the request line and headers exceed {config.max_header_bytes} bytes; "
                "send fewer or shorter headers",
            )
            return False
        if self._guard.head_bytes + count > config.max_total_header_bytes:
            self._guard.refuse("heads_total", self._client, 503)
            self._refuse(
                503,
                "the bin is receiving too many request headers at once; retry in a few seconds",
                {hdrs.RETRY_AFTER: "5"},
            )
            return False
        if self._head_timer is None:  # the first byte of a head starts the clock
            self._start_head_timer()
        self._head_bytes += count
        self._guard.head_bytes += count
        return True

    def _note_new_requests(self) -> None:
        """Heads the parser finished since last time: the connection is busy, and their bodies follow."""
        finished = self._request_count - self._requests_seen
        if finished <= 0:
            return
        self._requests_seen = self._request_count
        self._stop_waiting_for_head()
        self._unanswered += finished
        self._guard.set_busy(self)
        if not self._messages:
            return
        message, payload = self._messages[-1]
        if not isinstance(message, RawRequestMessage):  # a malformed head: answered 400/431, then closed
            self._parser_failed = True
            return
        self._payload = None if payload.is_eof() else payload
        length = message.headers.get(hdrs.CONTENT_LENGTH)
        self._body_bytes_left = int(length) if length and not message.chunked else None
        self._chunked_end = ChunkedBodyEnd() if message.chunked and self._payload is not None else None

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
        self._guard.refuse("head_timeout", self._client, 408)
        self._refuse(
            408,
            f"the request line and headers did not arrive within {self._guard.config.header_timeout_s:g} s; "
            "send them at once",
        )

    def _refuse(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._stop_waiting_for_head()
        self._guard.release(self)
        transport = self.transport
        # With a request before this head still being answered, an answer now would be read as its
        # answer: the connection is only closed.
        if transport is not None and not transport.is_closing() and not self._unanswered:
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
