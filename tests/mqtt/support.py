"""Test support for the MQTT tests: a real Mosquitto, a recording subscriber, generated events, TLS files.

The broker keeps a persistent store in its work directory, so a recording subscriber with a persistent
session receives the QoS 1 messages published while it was reconnecting after a broker restart, like a
dashboard with a durable session would.
"""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from recyclex_edge.config import MqttConfig
from recyclex_edge.health import HealthRegistry
from recyclex_edge.ids import new_event_id
from recyclex_edge.mqtt import MqttBridge
from recyclex_edge.mqtt.commands import CommandHandler
from recyclex_edge.outbox import Outbox

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
TIMEOUT_S = 20.0  # generous for a loaded 2-core machine; every wait still ends, and fails


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.02)


# -- TLS -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing here: trusting it must fail


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls_files(directory: Path) -> TlsFiles:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("RecycleX test CA", ca_key, None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    other_key = ec.generate_private_key(ec.SECP256R1())
    return TlsFiles(
        ca_cert=write("ca.pem", ca.public_bytes(pem)),
        server_cert=write(
            "server.pem",
            _certificate("127.0.0.1", server_key, ("RecycleX test CA", ca_key), server=True).public_bytes(
                pem
            ),
        ),
        server_key=write("server.key", _key_pem(server_key)),
        client_cert=write(
            "client.pem", _certificate("bin-tls", client_key, ("RecycleX test CA", ca_key)).public_bytes(pem)
        ),
        client_key=write("client.key", _key_pem(client_key)),
        other_ca_cert=write("other-ca.pem", _certificate("Some other CA", other_key, None).public_bytes(pem)),
    )


# -- the broker ------------------------------------------------------------------------------------------


class Mosquitto:
    """One broker process on a free loopback port, stoppable and restartable on that same port."""

    def __init__(self, workdir: Path, tls: TlsFiles | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.tls = tls
        self.acl: str | None = None  # mosquitto acl_file text; None: everyone may do everything
        self.users: dict[str, str] = {}  # user name -> password; empty: anonymous clients are welcome
        self.extra_config = ""  # appended to the generated configuration
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def _config(self) -> str:
        lines = [
            # Run as whoever runs the tests: started as root, mosquitto would otherwise switch to user
            # 'mosquitto', which cannot read pytest's private tmp directories.
            f"user {getpass.getuser()}",
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "max_queued_messages 100000",
            f"log_dest file {self.workdir}/mosquitto.log",
            "log_type all",
        ]
        if self.users:
            password_file = self.workdir / "passwords"
            password_file.write_text("")
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(password_file), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl_file = self.workdir / "acl"
            acl_file.write_text(self.acl)
            lines.append(f"acl_file {acl_file}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                "require_certificate true",
            ]
        return "\n".join(lines) + "\n" + self.extra_config

    def start(self) -> None:
        config = self.workdir / "mosquitto.conf"
        config.write_text(self._config())
        process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stderr=subprocess.PIPE)
        self._process = process

        def listening() -> bool:
            if process.poll() is not None:
                stderr = process.stderr.read().decode() if process.stderr else ""
                raise AssertionError(f"mosquitto exited with {process.returncode}: {stderr}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(listening, f"mosquitto on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistent store (sessions, queued messages) and exits."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def pause(self) -> None:
        """SIGSTOP: the broker holds every connection open but acknowledges nothing."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its configuration, the ACL included, keeping every connection."""
        assert self._process is not None
        (self.workdir / "mosquitto.conf").write_text(self._config())
        self._process.send_signal(signal.SIGHUP)

    def restart(self) -> None:
        self.stop()
        self.start()


# -- a dashboard stand-in --------------------------------------------------------------------------------


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Any = None

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Collector:
    """Subscribes, records every message, and waits for conditions on what it recorded."""

    client: paho.Client
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def on(self, topic: str) -> list[Received]:
        with self.lock:
            return [message for message in self.messages if message.topic == topic]

    def wait_for(
        self, topic: str, condition: Callable[[list[Received]], bool], what: str, timeout_s: float = TIMEOUT_S
    ) -> list[Received]:
        wait_until(lambda: condition(self.on(topic)), what, timeout_s)
        return self.on(topic)

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()

    def publish(self, topic: str, payload: str | bytes, **kwargs: Any) -> None:
        self.client.publish(topic, payload, qos=1, **kwargs).wait_for_publish(TIMEOUT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect_collector(
    server: Mosquitto,
    topics: list[str],
    client_id: str,
    *,
    protocol: str = "3.1.1",
    tls: TlsFiles | None = None,
) -> Collector:
    """A connected, subscribed Collector with a persistent session (MQTT 3.1.1) or a clean one (5)."""
    version = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=version,
        clean_session=False if version == MQTTProtocolVersion.MQTTv311 else None,
    )
    client.reconnect_delay_set(1, 1)
    if tls is not None:
        client.tls_set(ca_certs=str(tls.ca_cert), certfile=str(tls.client_cert), keyfile=str(tls.client_key))
    result = Collector(client)

    def on_connect(*_: Any) -> None:
        client.subscribe([(topic, 1) for topic in topics])

    def on_subscribe(*_: Any) -> None:
        result.subscribed.set()

    def on_message(_client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
        received = Received(message.topic, bytes(message.payload), bool(message.retain), message.properties)
        with result.lock:
            result.messages.append(received)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", server.port, keepalive=10)
    client.loop_start()
    if not result.subscribed.wait(TIMEOUT_S):
        raise AssertionError("the collector did not get its subscription acknowledged")
    return result


# -- the daemon's side ------------------------------------------------------------------------------------


def make_event(index: int, label: str = "glass", device_id: str = "bin-test") -> dict[str, Any]:
    """An event shaped like the sorting pipeline's (SortingPipeline._handle_item); each fifth is uncertain."""
    others = {"cardboard": 0.02, "metal": 0.03, "paper": 0.01, "plastic": 0.02, "trash": 0.01}
    uncertain = index % 5 == 4
    confidence = 0.41 if uncertain else 0.91
    return {
        "schema": 1,
        "id": new_event_id(),
        "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "device": device_id,
        "class": label,
        "confidence": confidence,
        "probabilities": {label: confidence, **{k: v for k, v in others.items() if k != label}},
        "decision": "uncertain" if uncertain else label,
        "action": "sorted:residual" if uncertain else f"sorted:{label}",
        "model": {"name": "trashnet-lite0-int8", "version": "1.0.0"},
        "timing": {
            "frames": 3,
            "inference_ms": 41.5 + index % 7,
            "settled_to_decided_ms": 130.2,
            "decided_to_actuated_ms": None if index % 3 == 0 else 3.2,
        },
    }


def submit(bridge: MqttBridge, event: dict[str, Any]) -> str:
    """Hand an event to the bridge as the pipeline does; its id."""
    bridge.submit_event(event)
    return str(event["id"])


@dataclass
class FakeDaemon:
    """The sorting daemon's side of the bridge: mode, counters, fill levels, command handlers."""

    mode: str = "sort"
    counters: dict[str, int] = field(default_factory=lambda: {"glass": 0, "paper": 0, "residual": 0})
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "counters": dict(self.counters),
            "fill_levels": {"glass": 40.0, "paper": 75.5},
        }

    def stats(self) -> dict[str, Any]:
        return {"fps": 9.7, "inference_ms": 38.4}

    def handlers(self) -> dict[str, CommandHandler]:
        def set_mode(arguments: dict[str, Any]) -> dict[str, Any]:
            self.calls.append(("mode", arguments))
            self.mode = arguments["mode"]
            return {"mode": self.mode}

        def test_actuator(arguments: dict[str, Any]) -> dict[str, Any]:
            self.calls.append(("test-actuator", arguments))
            if arguments["category"] not in self.counters:
                raise KeyError(f"no bin for {arguments['category']}")
            return {"moved": arguments["category"]}

        def reset_counters(arguments: dict[str, Any]) -> dict[str, Any]:
            self.calls.append(("reset-counters", arguments))
            self.counters = dict.fromkeys(self.counters, 0)
            return {}

        def reload_model(arguments: dict[str, Any]) -> dict[str, Any]:
            raise RuntimeError("interpreter exploded")

        return {
            "mode": set_mode,
            "test-actuator": test_actuator,
            "reset-counters": reset_counters,
            "reload-model": reload_model,
        }


@dataclass
class Bin:
    """One bridge wired the way the daemon wires it, over a real outbox."""

    bridge: MqttBridge
    outbox: Outbox
    health: HealthRegistry
    daemon: FakeDaemon


def mqtt_config(port: int, **overrides: Any) -> MqttConfig:
    """Test settings: retry every second, stats every second."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "reconnect": {"min_delay_s": 1, "max_delay_s": 1},
        "keepalive_s": 5,
        "stats_interval_s": 1.0,
        **overrides,
    }
    return MqttConfig.model_validate(values)
