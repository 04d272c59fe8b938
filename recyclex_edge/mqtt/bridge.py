"""MqttBridge: the one object the daemon talks to for everything MQTT.

    bridge = MqttBridge(config.mqtt, config.device.id, outbox, health,
                        commands={"mode": set_mode, ...},
                        state_provider=lambda: {"mode": ..., "counters": {...}, "fill_levels": {...}},
                        stats_provider=lambda: {"fps": ..., "inference_ms": ...})
    bridge.start()
    bridge.submit_event(event)   # durable in the outbox when it returns; published when the broker is up
    bridge.state_changed()       # mode, counters or fill levels changed: re-publish the retained state
    bridge.stop()

Threads: `mqtt-network` (paho's socket loop, see connection.py), `mqtt-publisher` (drains the outbox in
order, publishes state, stats and discovery) and `mqtt-commands` (runs command handlers). Nothing here
blocks the caller beyond the outbox commit, and no failure here stops the bin from sorting: both health
components, `mqtt` and `outbox`, are non-critical. The providers and command handlers are called on
those threads, so they must be thread-safe, and quick (the providers at least).

Delivery: each outbox row is handed to paho once per process, at most `max_inflight` at a time; paho
re-sends unacknowledged ones after a reconnect; a row is deleted when its PUBACK (PUBCOMP for QoS 2)
arrives. A process that dies re-sends every row still in the outbox: at-least-once, in order of first
delivery, duplicates recognisable by the event id.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from recyclex_edge.config import MqttConfig
from recyclex_edge.health import ComponentHealth, HealthRegistry, Status
from recyclex_edge.mqtt import system
from recyclex_edge.mqtt.commands import CommandDispatcher, CommandHandler
from recyclex_edge.mqtt.connection import HEALTH_COMPONENT, Connection
from recyclex_edge.mqtt.discovery import discovery_messages, other_layout
from recyclex_edge.mqtt.events import prepare_event, utc_timestamp
from recyclex_edge.mqtt.topics import Topics
from recyclex_edge.outbox import Outbox, OutboxRow

log = logging.getLogger("recyclex_edge.mqtt.bridge")

StateProvider = Callable[[], dict[str, Any]]
StatsProvider = Callable[[], dict[str, Any]]

# The retained state is re-published at most this often, however fast events arrive.
_STATE_MIN_INTERVAL_S = 0.5
# The publisher also wakes this often with nothing to do, to notice a stop or a due stats message.
_IDLE_WAKE_S = 1.0
# Of the broker's Receive Maximum, this many are left to availability, state and command results.
_CONTROL_RESERVE = 3
_LAST_EVENT_KEYS = ("id", "ts", "class", "confidence", "decision", "action")


class MqttBridge:
    """Events, state, stats, availability, discovery and commands over one broker connection."""

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        outbox: Outbox,
        health: HealthRegistry,
        *,
        commands: Mapping[str, CommandHandler],
        state_provider: StateProvider,
        stats_provider: StatsProvider,
        device_name: str = "",
    ) -> None:
        self._config = config
        self._device_id = device_id
        self._device_name = device_name
        self._outbox = outbox
        self._health = health
        self._state_provider = state_provider
        self._stats_provider = stats_provider
        self.topics = Topics.for_device(device_id, config.topic_prefix, config.discovery.prefix)
        self._client_id = config.client_id or f"recyclex-{device_id}"
        # A command that succeeded may have changed the mode or the counters: re-publish the state.
        self._commands = CommandDispatcher(
            commands, self.topics.command_result, self._send_result, after_command=self.state_changed
        )
        self._connection: Connection | None = None
        self._thread: threading.Thread | None = None
        self._started_at = time.monotonic()
        self._cpu = system.CpuMeter()

        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards the flags and last_event below, set from other threads
        self._state_dirty = True
        self._announce = False
        self._stale_discovery: set[str] = set()  # retained topics of the discovery layout not in use
        self._last_event: dict[str, Any] | None = None

        # Only the publisher thread touches these (and stop(), after that thread has ended).
        self._acks: deque[tuple[int, bool, str]] = deque()  # appended on the network thread
        self._inflight: dict[int, OutboxRow] = {}  # paho message id -> outbox row
        self._cursor = 0  # highest outbox seq handed to paho
        self._generation = outbox.generation  # of the outbox seqs the cursor counts in
        self._refused_at: float | None = None  # when the broker last refused an event (MQTT 5 PUBACK error)
        self._refusals = 0  # refusals since events were last accepted
        health.subscribe(self._health_changed)

    # -- the daemon's interface ----------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and start publishing; never raises for an unreachable broker."""
        try:
            self._connection = Connection(
                self._config,
                self._client_id,
                self.topics,
                self._health,
                on_connected=self._connected,
                on_message=self._message,
                on_acknowledged=self._acknowledged,
            )
        except (OSError, ssl.SSLError, ValueError) as error:
            # Typically a TLS file that is missing or not PEM. Events still accumulate in the outbox.
            log.error("MQTT disabled until restart: %s", error)
            self._report_mqtt(Status.FAILING, f"cannot set up the client: {error}; check mqtt.tls.*")
            return
        self._commands.start()
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()
        self._connection.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish `offline`, disconnect, end the threads. Unacknowledged events stay in the outbox."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self._commands.stop(timeout_s)
        if self._connection is not None:
            self._connection.stop(timeout_s)
            self._apply_acks()
            self._connection = None

    def submit_event(self, event: Mapping[str, Any]) -> None:
        """Queue one decision event; returns once it is durable in the outbox (a pipeline event sink).

        Fills in `schema`, `device`, `id` and `ts` when absent. Blocks for one SQLite commit (an fsync):
        call it from a worker thread, not the event loop. Raises ValueError for an event that lacks a
        required key or holds NaN, which is a bug in the caller.
        """
        complete, payload = prepare_event(event, self._device_id)
        self._outbox.append(str(complete["id"]), payload)
        with self._lock:
            self._last_event = {key: complete.get(key) for key in _LAST_EVENT_KEYS}
            self._state_dirty = True
        self._wake.set()

    def state_changed(self) -> None:
        """Something in the state provider's answer changed; re-publish the retained state soon."""
        with self._lock:
            self._state_dirty = True
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.connected

    @property
    def reconnects(self) -> int:
        return self._connection.reconnects if self._connection is not None else 0

    # -- network thread callbacks: hand over, never block --------------------------------------------

    def _connected(self) -> None:
        assert self._connection is not None
        filters = [self.topics.commands]
        if self._config.discovery.enabled:
            filters.append(self.topics.homeassistant_status)
            filters.append(other_layout(self.topics, per_entity=self._config.discovery.per_entity))
        self._connection.subscribe(filters)
        with self._lock:
            self._announce = True
        self._wake.set()

    def _message(self, message: paho.MQTTMessage) -> None:
        stale = other_layout(self.topics, per_entity=self._config.discovery.per_entity)
        if self._config.discovery.enabled and paho.topic_matches_sub(stale, message.topic):
            if message.payload:
                with self._lock:
                    self._stale_discovery.add(message.topic)
                self._wake.set()
            return
        if message.topic == self.topics.homeassistant_status:
            if message.payload.strip() == b"online":
                log.info("Home Assistant came online; announcing the bin again")
                with self._lock:
                    self._announce = True
                self._wake.set()
            return
        name = self.topics.command_name(message.topic)
        if name is None:
            return
        if message.retain:
            # A retained command would run again on every reconnect: refuse it, and say why.
            self._commands.reject(name, "retained commands are ignored; publish without the retain flag")
            return
        properties = message.properties
        response_topic = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        self._commands.receive(name, bytes(message.payload), response_topic, correlation)

    def _acknowledged(self, mid: int, ok: bool, reason: str) -> None:
        self._acks.append((mid, ok, reason))
        self._wake.set()

    def _health_changed(self, name: str, component: ComponentHealth) -> None:
        self.state_changed()

    def _send_result(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        if self._connection is None:
            return
        properties = None
        if correlation is not None and self._config.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = correlation
        self._connection.publish(topic, payload, qos=1, properties=properties)

    # -- the publisher thread ------------------------------------------------------------------------

    def _run(self) -> None:
        next_stats = time.monotonic() + self._config.stats_interval_s
        next_state = 0.0
        while not self._stopping.is_set():
            # Timers only matter while connected; offline, a (re)connect or a stop wakes the thread.
            wait_s = _IDLE_WAKE_S
            if self.connected:
                now = time.monotonic()
                wait_s = min(wait_s, max(0.0, next_stats - now))
                if self._state_dirty:
                    wait_s = min(wait_s, max(0.0, next_state - now))
            self._wake.wait(wait_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._apply_acks()
                if self._connection is None or not self._connection.connected:
                    continue
                with self._lock:
                    announce, self._announce = self._announce, False
                    stale, self._stale_discovery = self._stale_discovery, set()
                if stale:
                    self._clear_discovery(stale)
                    announce = True  # Home Assistant may have refused ours while the old copies existed
                if announce:
                    self._publish_announcement()
                self._publish_events()
                now = time.monotonic()
                if self._state_dirty and now >= next_state:
                    self._publish_state()
                    next_state = now + _STATE_MIN_INTERVAL_S
                if now >= next_stats:
                    self._publish_stats()
                    next_stats = now + self._config.stats_interval_s
            except Exception:
                # A bug or a provider failure must not end publishing for good; the outbox keeps events.
                log.exception("MQTT publisher error; continuing")
                self._stopping.wait(_IDLE_WAKE_S)

    def _apply_acks(self) -> None:
        acknowledged: list[OutboxRow] = []
        while self._acks:
            mid, ok, reason = self._acks.popleft()
            row = self._inflight.pop(mid, None)
            if row is None:
                continue  # state, availability or a command result
            if ok:
                acknowledged.append(row)
            elif self._refused_at is None:
                log.error("broker refused event (outbox seq %d): %s; will send it again", row.seq, reason)
                self._report_mqtt(
                    Status.FAILING,
                    f"broker refused an event: {reason}; check the broker's ACL for {self.topics.events}",
                )
                self._refused_at = time.monotonic()
                self._refusals += 1
        if acknowledged and self._refusals and self._refused_at is None:
            log.info("the broker accepts events again")
            self._refusals = 0
            self._report_mqtt(Status.OK, "connected; the broker accepts events again")
        self._outbox.ack(acknowledged)

    def _publish_events(self) -> None:
        assert self._connection is not None
        if self._refused_at is not None:
            # Refused events stay queued, never skipped: once nothing is in flight, wait as long as the
            # longest reconnect delay, then send again from the oldest row.
            waited_s = time.monotonic() - self._refused_at
            if self._inflight or waited_s < self._config.reconnect.max_delay_s:
                return
            self._refused_at = None
            self._cursor = 0
        if self._outbox.generation != self._generation:
            # The outbox renumbered its rows (a late open put older rows first): read from the start.
            self._generation = self._outbox.generation
            self._cursor = 0
        window = min(self._config.max_inflight, max(1, self._connection.receive_maximum - _CONTROL_RESERVE))
        room = window - len(self._inflight)
        if room <= 0:
            return
        for row in self._outbox.pending(self._cursor, room):
            if row.generation != self._generation:
                return  # renumbered just now: the next round reads from the start
            mid = self._connection.publish(self.topics.events, row.payload, qos=self._config.qos)
            if mid is None:
                return
            self._inflight[mid] = row
            self._cursor = row.seq

    def _publish_announcement(self) -> None:
        """After every (re)connect and on Home Assistant's birth: discovery, then the retained state."""
        assert self._connection is not None
        if self._config.discovery.enabled:
            for topic, payload in discovery_messages(
                self.topics,
                self._device_name,
                self._state(),
                self._commands.names,
                per_entity=self._config.discovery.per_entity,
            ):
                self._connection.publish(topic, payload, qos=1, retain=True)
        self.state_changed()

    def _clear_discovery(self, topics: set[str]) -> None:
        """Empty the retained discovery messages the other layout left, e.g. after switching per_entity."""
        assert self._connection is not None
        log.info("clearing %d retained discovery message(s) of the layout not in use", len(topics))
        for topic in sorted(topics):
            self._connection.publish(topic, b"", qos=1, retain=True)

    def _report_mqtt(self, status: Status, detail: str) -> None:
        self._health.report(HEALTH_COMPONENT, status, detail, critical=False)

    def _state(self) -> dict[str, Any]:
        with self._lock:
            last_event = self._last_event
        return {
            "device": self._device_id,
            "ts": utc_timestamp(),
            **self._state_provider(),
            "health": self._health.overall().value,
            "last_event": last_event,
            # Depth moves with every acknowledgement and lives in stats; loss and durability belong here.
            "outbox": {"lost": self._outbox.lost, "durable": self._outbox.durable},
        }

    def _publish_state(self) -> None:
        assert self._connection is not None
        with self._lock:
            self._state_dirty = False
        self._connection.publish(self.topics.state, json.dumps(self._state()), qos=1, retain=True)

    def _publish_stats(self) -> None:
        assert self._connection is not None
        stats = {
            "device": self._device_id,
            "ts": utc_timestamp(),
            **self._stats_provider(),
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "cpu_percent": self._cpu.percent(),
            "load_1m": system.load_1m(),
            "memory_rss_bytes": system.memory_rss_bytes(),
            "memory_available_bytes": system.memory_available_bytes(),
            "soc_temp_c": system.soc_temperature_c(),
            "outbox": {
                "depth": self._outbox.depth,
                "bytes": self._outbox.size_bytes,
                "lost": self._outbox.lost,
                "durable": self._outbox.durable,
            },
            "mqtt": {"reconnects": self._connection.reconnects},
        }
        # QoS 0 and only while connected: stats are never queued, the next ones supersede them.
        self._connection.publish(self.topics.stats, json.dumps(stats), qos=0)
