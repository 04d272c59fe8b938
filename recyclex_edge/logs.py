"""Logging to stderr, which journald collects under systemd. One line per event worth knowing.

Two things protect the log from whoever can reach the bin:
- every line is made of printable characters only: control characters (newlines included) in any field
  are escaped, so a path, a header or a JWT subject cannot start a line of its own that looks like ours;
- each kind of message (the same format string from the same logger, or the access log of one client)
  has a token bucket; beyond it lines are counted, and one 'N similar messages suppressed' line per kind
  and period says how many went unwritten. A flood of unknown paths or asyncio's accept errors costs a
  few lines a second, not megabytes.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from recyclex_edge.config import LoggingConfig

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators some viewers break lines on.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Access log records carry this attribute: the client the bucket is kept for.
LOG_KEY_ATTRIBUTE = "log_key"
_SUMMARY_ATTRIBUTE = "log_summary"
# A logger's messages together may write this many kinds' worth of lines.
LOGGER_SHARE = 4.0


def _escape_match(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """'a\\nb' -> 'a\\\\x0ab': printable, one line, and still readable."""
    return _CONTROL.sub(_escape_match, text)


def _escape_traceback(text: str) -> str:
    # Keep a traceback readable over several lines, but indent every one of them, so an exception
    # message with a newline cannot put a line of its own at the start of the log.
    return "\n".join("  | " + escape_control(line) for line in text.splitlines())


class SafeTextFormatter(logging.Formatter):
    """The text format with every field escaped (the message after %-formatting its arguments)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return escape_control(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:  # noqa: N802
        return _escape_traceback(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return _escape_traceback(stack_info)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; json.dumps escapes control characters by itself."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


@dataclass
class _Bucket:
    tokens: float
    updated: float
    suppressed: int = 0
    sample: str = ""


class LogRateLimiter(logging.Filter):
    """A logging filter: a token bucket per kind of message, with counted, summarised suppression.

    The kind is (logger, level, format string), or (logger, `record.log_key`) when the record names one
    (the access log names its client). A logger's kinds together also share a bucket `LOGGER_SHARE`
    times as large, so a flood from many addresses is bounded as a whole. Kinds are forgotten least
    recently used beyond `max_kinds`, so the filter's own memory is bounded too. Thread-safe: camera and
    inference threads log as well.
    """

    def __init__(
        self,
        lines_per_s: float,
        burst: int,
        *,
        summary_interval_s: float = 10.0,
        max_kinds: int = 1000,
    ) -> None:
        super().__init__()
        self._rate = lines_per_s
        self._burst = float(burst)
        self._summary_interval_s = summary_interval_s
        self._max_kinds = max_kinds
        self._kinds: dict[tuple[str, ...], _Bucket] = {}
        self._loggers: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()

    def _take(self, bucket: _Bucket, now: float, scale: float) -> bool:
        bucket.tokens = min(self._burst * scale, bucket.tokens + (now - bucket.updated) * self._rate * scale)
        bucket.updated = now
        return bucket.tokens >= 1.0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SUMMARY_ATTRIBUTE, False):
            return True
        key = _kind(record)
        now = time.monotonic()
        with self._lock:
            kind = self._kinds.pop(key, None)  # re-inserted last: the dict is the LRU order
            if kind is None:
                kind = _Bucket(self._burst, now)
                if len(self._kinds) >= self._max_kinds:
                    self._kinds.pop(next(iter(self._kinds)))
            self._kinds[key] = kind
            shared = self._loggers.setdefault(record.name, _Bucket(self._burst * LOGGER_SHARE, now))
            allowed = self._take(kind, now, 1.0) and self._take(shared, now, LOGGER_SHARE)
            if allowed:
                kind.tokens -= 1.0
                shared.tokens -= 1.0
            else:
                if shared.suppressed == 0:
                    shared.sample = str(record.msg)[:200]
                shared.suppressed += 1
            due = now - self._last_flush >= self._summary_interval_s
        if due:
            self.flush()
        return allowed

    def flush(self) -> None:
        """Write one summary line per logger that had lines suppressed. Called on any record once the
        interval has passed, and by the daemon's housekeeping so a flood that stopped is summed up too."""
        with self._lock:
            self._last_flush = time.monotonic()
            pending = [(name, b.suppressed, b.sample) for name, b in self._loggers.items() if b.suppressed]
            for name, _, _ in pending:
                self._loggers[name].suppressed = 0
        for name, count, sample in pending:
            logging.getLogger(name).warning(
                "%d similar messages suppressed (more than %g a second of one kind), e.g.: %s",
                count,
                self._rate,
                sample,
                extra={_SUMMARY_ATTRIBUTE: True},
            )


def _kind(record: logging.LogRecord) -> tuple[str, ...]:
    log_key = getattr(record, LOG_KEY_ATTRIBUTE, None)
    if log_key is not None:
        return (record.name, str(log_key))
    return (record.name, record.levelname, str(record.msg))


_limiter: LogRateLimiter | None = None


def flush_suppressed() -> None:
    """Sum up what the rate limit held back since the last summary (no-op before configure_logging)."""
    if _limiter is not None:
        _limiter.flush()


def configure_logging(config: LoggingConfig) -> None:
    global _limiter
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # journald adds its own timestamp; under a terminal the time still helps.
        handler.setFormatter(SafeTextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _limiter = LogRateLimiter(config.max_lines_per_s, config.burst_lines)
    handler.addFilter(_limiter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
