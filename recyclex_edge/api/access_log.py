"""One structured (logfmt) line per request: method, path, status, ms, client, bytes. Never a body."""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from recyclex_edge.api.keys import CLIENT, IDENTITY

ACCESS_LOG = logging.getLogger("recyclex_edge.api.access")


class AccessLogger(AbstractAccessLogger):
    """Pass to `web.AppRunner(app, access_log_class=AccessLogger, access_log=ACCESS_LOG)`.

    The path is logged without its query string, and the client is the one the rate limit saw (after
    trusted proxies), so the line answers "who called what" without recording what they sent.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        identity = request.get(IDENTITY)
        subject = identity.subject if identity is not None and identity.subject else "-"
        self.logger.info(
            "method=%s path=%s status=%d ms=%.1f client=%s subject=%s bytes_in=%d bytes_out=%d",
            request.method,
            request.path,
            response.status,
            time * 1000.0,
            request.get(CLIENT) or request.remote or "-",
            subject,
            request.content_length or 0,
            response.body_length,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
