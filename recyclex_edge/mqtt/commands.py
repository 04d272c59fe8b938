"""Commands from dashboards: `<prefix>/cmd/<name>` with a JSON object, answered on `.../result`.

The daemon supplies one handler per command (`Callable[[dict], dict]`: the validated arguments in, a JSON
object out). The dispatcher parses and validates the payload, runs the handler on its own thread (a
servo test or a model reload must not stall the MQTT keepalive), and always answers: a malformed payload,
an unknown command, a full queue or a handler that raises each produce `{"ok": false, "error": ...}`.

Answers go to the MQTT 5 response topic with the request's correlation data when the request carries
them, else to `<prefix>/cmd/<name>/result`. MQTT 3.1.1 clients can put a `request_id` string in the
payload; it is echoed back.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from recyclex_edge.mqtt.events import utc_timestamp

log = logging.getLogger("recyclex_edge.mqtt.commands")

CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]
# (topic, payload, correlation data or None)
ResultSink = Callable[[str, bytes, bytes | None], None]

MODES = ("sort", "pass-through", "maintenance")

# Arguments each known command takes: name -> allowed values (a tuple) or a type. Anything else is an
# error, so that a typo in a dashboard button is reported instead of silently ignored.
ARGUMENTS: dict[str, dict[str, tuple[str, ...] | type]] = {
    "mode": {"mode": MODES},
    "test-actuator": {"category": str},
    "reload-model": {},
    "reset-counters": {},
    "snapshot": {},
    "install-model": {"url": str, "sha256": str},
    "activate-model": {"version": str},
    "rollback-model": {},
    "remove-model": {"version": str},
    "label": {"event_id": str, "label": str},  # a captured item's label (field learning)
}
# Arguments a command may take but need not. `by` names the sender for the model audit log (MQTT does
# not tell a subscriber who published; the broker's ACL decides who may).
OPTIONAL_ARGUMENTS: dict[str, dict[str, type]] = {
    "install-model": {"shadow": bool, "by": str},
    "activate-model": {"by": str},
    "rollback-model": {"by": str},
    "remove-model": {"by": str},
}
# Who sent the command being handled, for handlers that record it (the model audit log): "mqtt[:<by>]"
# here, "http:<token or address>" from the page's /api/commands. Set around each handler call.
CALLER: ContextVar[str] = ContextVar("command_caller", default="unknown")

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_PENDING = 8  # commands waiting for the worker; more are refused with "busy"
_MAX_REQUEST_ID_CHARS = 128


class InvalidCommandError(Exception):
    """A request that cannot be run; the message is sent back to the caller."""


@dataclass(frozen=True)
class _Request:
    name: str
    arguments: dict[str, Any]
    reply_to: str
    correlation: bytes | None
    request_id: str | None


class CommandDispatcher:
    """Validates, queues (bounded) and runs commands on the `mqtt-commands` thread."""

    def __init__(
        self,
        handlers: Mapping[str, CommandHandler],
        result_topic: Callable[[str], str],
        send_result: ResultSink,
        after_command: Callable[[], None],
    ) -> None:
        unknown = sorted(set(handlers) - set(ARGUMENTS))
        if unknown:
            raise ValueError(f"no such command: {', '.join(unknown)}; known: {', '.join(ARGUMENTS)}")
        self._handlers = dict(handlers)
        self._result_topic = result_topic
        self._send_result = send_result
        self._after_command = after_command
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=MAX_PENDING)
        self._thread: threading.Thread | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-commands", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("command queue still full at shutdown; pending commands are dropped")
        self._thread.join(timeout_s)
        self._thread = None

    def receive(
        self, name: str, payload: bytes, response_topic: str | None, correlation: bytes | None
    ) -> None:
        """Called on the network thread for every message on a command topic; never blocks, never raises."""
        reply_to = self._reply_topic(name, response_topic)
        try:
            arguments, request_id = self._parse(name, payload)
        except InvalidCommandError as rejection:
            self._answer(reply_to, correlation, name, None, error=str(rejection))
            return
        try:
            self._queue.put_nowait(_Request(name, arguments, reply_to, correlation, request_id))
        except queue.Full:
            self._answer(
                reply_to,
                correlation,
                name,
                request_id,
                error=f"busy: {MAX_PENDING} commands are waiting; retry later",
            )

    def reject(self, name: str, reason: str) -> None:
        """Answer a request that is refused before its payload is even read."""
        self._answer(self._result_topic(name), None, name, None, error=reason)

    def _reply_topic(self, name: str, response_topic: str | None) -> str:
        if response_topic and not set(response_topic) & {"+", "#"}:
            return response_topic
        return self._result_topic(name)

    def _parse(self, name: str, payload: bytes) -> tuple[dict[str, Any], str | None]:
        if name not in self._handlers:
            raise InvalidCommandError(
                f"unknown command {name!r}; this bin accepts: {', '.join(self._handlers)}"
            )
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise InvalidCommandError(
                f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES} byte limit"
            )
        try:
            document = json.loads(payload.decode("utf-8")) if payload.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidCommandError(f"payload is not valid JSON: {error}") from None
        if not isinstance(document, dict):
            raise InvalidCommandError('payload must be a JSON object, e.g. {"mode": "sort"}')
        request_id = document.pop("request_id", None)
        if request_id is not None and (
            not isinstance(request_id, str) or len(request_id) > _MAX_REQUEST_ID_CHARS
        ):
            raise InvalidCommandError(
                f"request_id must be a string of at most {_MAX_REQUEST_ID_CHARS} characters"
            )
        spec = ARGUMENTS[name]
        optional = OPTIONAL_ARGUMENTS.get(name, {})
        extra = sorted(set(document) - set(spec) - set(optional))
        if extra:
            expected = ", ".join([*spec, *optional]) or "no arguments"
            raise InvalidCommandError(f"unknown argument(s) {', '.join(extra)}; {name!r} takes {expected}")
        for key, allowed in [*spec.items(), *optional.items()]:
            if key not in document:
                if key in optional:
                    continue
                raise InvalidCommandError(f"{name!r} needs {key!r}")
            value = document[key]
            if isinstance(allowed, tuple):
                if value not in allowed:
                    raise InvalidCommandError(f"{key} must be one of {', '.join(allowed)} (got {value!r})")
            elif not isinstance(value, allowed) or (isinstance(value, str) and not value):
                raise InvalidCommandError(f"{key} must be a non-empty {allowed.__name__} (got {value!r})")
        return document, request_id

    def _run(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            by = request.arguments.get("by")
            caller = CALLER.set(f"mqtt:{by}" if by else "mqtt")
            try:
                result = self._handlers[request.name](dict(request.arguments))
                if not isinstance(result, dict):
                    raise TypeError(f"handler returned {type(result).__name__}, not a dict")
                json.dumps(result, allow_nan=False)
            except Exception as error:
                log.exception("command %s failed", request.name)
                self._answer(
                    request.reply_to,
                    request.correlation,
                    request.name,
                    request.request_id,
                    error=f"{request.name} failed: {type(error).__name__}: {error}",
                )
                continue
            finally:
                CALLER.reset(caller)
            log.info("command %s %s done", request.name, request.arguments)
            self._after_command()
            self._answer(
                request.reply_to, request.correlation, request.name, request.request_id, result=result
            )

    def _answer(
        self,
        reply_to: str,
        correlation: bytes | None,
        name: str,
        request_id: str | None,
        *,
        result: dict[str, Any] | None = None,
        error: str = "",
    ) -> None:
        answer: dict[str, Any] = {"command": name, "ok": not error, "ts": utc_timestamp()}
        if error:
            log.warning("command %s rejected: %s", name, error)
            answer["error"] = error
        else:
            answer["result"] = result
        if request_id is not None:
            answer["request_id"] = request_id
        try:
            self._send_result(reply_to, json.dumps(answer).encode(), correlation)
        except Exception:
            log.exception("cannot send the result of command %s", name)
