"""One structured (logfmt) line per request: method, path, status, ms, client, bytes. Never a body.

Fields that come from the client are clipped (a path of 8 kB writes 8 kB of log otherwise); the log
formatter escapes their control characters, and the log's rate limit keeps a bucket per client
(`log_key`), so one client's flood of requests cannot fill the journal or crowd out others' lines.
"""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from recyclex_edge.api.errors import clip
from recyclex_edge.api.keys import CLIENT, IDENTITY
from recyclex_edge.logs import LOG_KEY_ATTRIBUTE

ACCESS_LOG = logging.getLogger("recyclex_edge.api.access")
MAX_PATH_CHARS = 200
MAX_SUBJECT_CHARS = 100


class AccessLogger(AbstractAccessLogger):
    """Pass to `web.AppRunner(app, access_log_class=AccessLogger, access_log=ACCESS_LOG)`.

    The path is logged without its query string, and the client is the one the rate limit saw (after
    trusted proxies), so the line answers "who called what" without recording what they sent.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        identity = request.get(IDENTITY)
        subject = identity.subject if identity is not None and identity.subject else "-"
        client = request.get(CLIENT) or request.remote or "-"
        self.logger.info(
            "method=%s path=%s status=%d ms=%.1f client=%s subject=%s bytes_in=%d bytes_out=%d",
            clip(request.method, 20),
            clip(request.path, MAX_PATH_CHARS),
            response.status,
            time * 1000.0,
            client,
            clip(subject, MAX_SUBJECT_CHARS),
            request.content_length or 0,
            response.body_length,
            extra={LOG_KEY_ATTRIBUTE: client},
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
