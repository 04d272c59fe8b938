"""The broker connection: one paho-mqtt client on a named thread, reconnecting with backoff, reporting health.

paho owns the socket and the QoS 1 handshake. Messages it has sent but not seen acknowledged stay in its
session and are re-sent, in order, after a reconnect; the bridge relies on that within one process
lifetime and on the outbox across process lifetimes.

Callbacks (`on_connected`, `on_message`, `on_acknowledged`) run on the network thread, with paho's
internal locks held: they must only hand work over (append to a deque, set an event), never publish
from another lock or block.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from recyclex_edge.config import MqttConfig
from recyclex_edge.health import HealthRegistry, Status
from recyclex_edge.mqtt.topics import Topics

log = logging.getLogger("recyclex_edge.mqtt.connection")

HEALTH_COMPONENT = "mqtt"

# QoS 1 messages that are not events (availability, state, discovery, command results) may be in flight
# besides the event window; paho's limit leaves room for them so they never wait behind events.
_CONTROL_HEADROOM = 16

OnMessage = Callable[[paho.MQTTMessage], None]
OnAcknowledged = Callable[[int, bool, str], None]


class Connection:
    """A paho client with a lifecycle, a health report and nothing else. Thread-safe `publish()`."""

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        topics: Topics,
        health: HealthRegistry,
        *,
        on_connected: Callable[[], None],
        on_message: OnMessage,
        on_acknowledged: OnAcknowledged,
    ) -> None:
        self._config = config
        self._topics = topics
        self._health = health
        self._on_connected = on_connected
        self._on_message = on_message
        self._on_acknowledged = on_acknowledged
        self._where = f"{config.host}:{config.port}"
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.connects = 0
        # MQTT 5 brokers announce how many QoS > 0 publishes they accept unacknowledged (Receive Maximum);
        # paho does not enforce it, so the bridge sizes its window by it. 65535 is the protocol default.
        self.receive_maximum = 65535
        self.protocol_version = (
            MQTTProtocolVersion.MQTTv5 if config.protocol == "5" else MQTTProtocolVersion.MQTTv311
        )
        self._client = self._build_client(client_id)

    def _build_client(self, client_id: str) -> paho.Client:
        config = self._config
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=self.protocol_version,
            # A clean session: paho re-sends what is in flight itself, the outbox covers restarts.
            clean_session=True if self.protocol_version == MQTTProtocolVersion.MQTTv311 else None,
        )
        client.max_inflight_messages_set(config.max_inflight + _CONTROL_HEADROOM)
        client.reconnect_delay_set(config.reconnect.min_delay_s, config.reconnect.max_delay_s)
        client.will_set(self._topics.availability, "offline", qos=1, retain=True)
        if config.username is not None:
            password = config.password.get_secret_value() if config.password is not None else None
            client.username_pw_set(config.username, password)
        if config.tls.enabled:
            client.tls_set(
                ca_certs=str(config.tls.ca_file) if config.tls.ca_file else None,
                certfile=str(config.tls.cert_file) if config.tls.cert_file else None,
                keyfile=str(config.tls.key_file) if config.tls.key_file else None,
            )
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        return client

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; returns at once, whether or not the broker is reachable."""
        self._report(Status.FAILING, f"connecting to {self._where}")
        self._client.connect_async(
            self._config.host,
            self._config.port,
            keepalive=self._config.keepalive_s,
            clean_start=True
            if self.protocol_version == MQTTProtocolVersion.MQTTv5
            else paho.MQTT_CLEAN_START_FIRST_ONLY,
        )
        self._thread = threading.Thread(target=self._run, name="mqtt-network", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # loop_forever reconnects with paho's backoff; it only returns after disconnect(). An exception
        # escaping it (a paho bug, a TLS setup error) must not end MQTT for good: wait and go again.
        while not self._stopping.is_set():
            try:
                self._client.loop_forever(retry_first_connection=True)
            except Exception as error:
                log.exception("MQTT network loop failed; restarting it")
                self._report(Status.FAILING, f"network loop failed: {error}; retrying")
                self._stopping.wait(self._config.reconnect.max_delay_s)

    def stop(self, timeout_s: float) -> None:
        """Say `offline` (retained) while still connected, then disconnect and end the thread."""
        if self._thread is None:
            return
        if self._connected.is_set():
            info = self._client.publish(self._topics.availability, "offline", qos=1, retain=True)
            # Disconnected meanwhile (RuntimeError/ValueError): the broker publishes our will instead.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=timeout_s)
        self._stopping.set()
        self._client.disconnect()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("MQTT network thread did not end within %.1f s", timeout_s)
        self._thread = None

    # -- use -------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def reconnects(self) -> int:
        """Successful connections after the first one."""
        return max(0, self.connects - 1)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int | None:
        """Hand a message to paho; its message id, or None when paho did not take it."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        # NO_CONN with QoS > 0 is fine too: paho keeps the message and sends it after the reconnect.
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
        ):
            return info.mid
        return None

    def subscribe(self, topics: list[str]) -> None:
        self._client.subscribe([(topic, 1) for topic in topics])

    # -- paho callbacks (network thread) -------------------------------------------------------------

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            hint = ""
            if reason.value in (0x86, 0x87):  # bad user name or password, not authorised
                hint = "; check mqtt.username and mqtt.password (or the client certificate)"
            self._report(Status.FAILING, f"{self._where} refused the connection: {reason}{hint}")
            return
        self.connects += 1
        self.receive_maximum = int(getattr(properties, "ReceiveMaximum", 65535))
        self._connected.set()
        log.info("connected to %s (MQTT %s)", self._where, self._config.protocol)
        self._report(Status.OK, f"connected to {self._where}")
        # Retained, so a dashboard that subscribes later still learns the bin is up; the will undoes it.
        client.publish(self._topics.availability, "online", qos=1, retain=True)
        self._on_connected()

    def _handle_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError`, so the reason is still at hand.
        error = sys.exc_info()[1]
        reason = str(error) if error is not None else "unreachable"
        self._report(Status.FAILING, f"cannot connect to {self._where}: {reason}; retrying with backoff")

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._stopping.is_set():
            self._report(Status.FAILING, "stopped")
            return
        if was_connected:
            log.warning("lost the connection to %s: %s; reconnecting", self._where, reason)
            self._report(Status.FAILING, f"lost the connection to {self._where}: {reason}; reconnecting")

    def _handle_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            self._on_message(message)
        except Exception:
            # Whatever a message contains, the network thread survives it.
            log.exception("error handling a message on %s", message.topic)

    def _handle_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._on_acknowledged(mid, not reason.is_failure, str(reason))

    def _report(self, status: Status, detail: str) -> None:
        self._health.report(HEALTH_COMPONENT, status, detail, critical=False)
