from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from recyclex_edge.config.base import Section


class MqttTlsConfig(Section):
    """TLS to the broker. The broker's certificate is always verified, against `ca_file` or the system CAs."""

    enabled: bool = Field(False, description="Connect with TLS (usually port 8883).")
    ca_file: Path | None = Field(
        None, description="PEM file of the CA that signed the broker's certificate. Empty: the system CAs."
    )
    cert_file: Path | None = Field(
        None, description="PEM client certificate, for brokers that authenticate clients by certificate."
    )
    key_file: Path | None = Field(
        None,
        description="PEM private key of cert_file; use a systemd credential path, not a world-readable file.",
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self


class MqttReconnectConfig(Section):
    """How often to retry a lost broker: the delay doubles from min to max after each failure."""

    min_delay_s: int = Field(1, ge=1, le=3600, description="First retry delay, seconds.")
    max_delay_s: int = Field(60, ge=1, le=3600, description="Longest retry delay, seconds.")

    @model_validator(mode="after")
    def _ordered(self) -> MqttReconnectConfig:
        if self.max_delay_s < self.min_delay_s:
            raise ValueError("max_delay_s must be at least min_delay_s")
        return self


class HomeAssistantConfig(Section):
    """Home Assistant MQTT discovery (one retained device-based config message, or one per entity)."""

    enabled: bool = Field(True, description="Announce the bin's entities to Home Assistant.")
    per_entity: bool = Field(
        False,
        description=(
            "One config message per entity (<prefix>/<platform>/<device.id>/<key>/config) instead of one "
            "for the device: for Home Assistant before 2024.11, which has no device discovery."
        ),
    )
    prefix: str = Field(
        "homeassistant",
        pattern=r"^[^#+/][^#+]*[^#+/]$|^[^#+/]$",
        description="Home Assistant's discovery prefix; its birth message is read from <prefix>/status.",
    )


class MqttConfig(Section):
    """The broker that facility dashboards listen to."""

    enabled: bool = Field(True, description="Publish events, state and health over MQTT.")
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual for TLS).")
    protocol: Literal["3.1.1", "5"] = Field(
        "5",
        description="MQTT protocol version; with 3.1.1 an event the broker's ACL refuses is lost unnoticed.",
    )
    topic_prefix: str = Field(
        "",
        pattern=r"^$|^[^#+/][^#+]*[^#+/]$|^[^#+/]$",
        description="Topic prefix: no wildcards, no leading or trailing '/'. Empty: 'recyclex/<device.id>'.",
    )
    client_id: str = Field(
        "",
        max_length=64,
        description="MQTT client id. Empty: 'recyclex-<device.id>'. Must be unique per broker.",
    )
    username: str | None = Field(None, description="Broker user name.")
    password: SecretStr | None = Field(
        None, description="Broker password; use ${credential:mqtt-password} or ${ENV_VAR}, not a literal."
    )
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig, description="TLS and client certificates.")
    keepalive_s: int = Field(
        30,
        ge=5,
        le=3600,
        description="Keepalive; the broker declares the bin offline after 1.5x this silence.",
    )
    reconnect: MqttReconnectConfig = Field(
        default_factory=MqttReconnectConfig, description="Reconnect backoff after a lost connection."
    )
    qos: Literal[1, 2] = Field(
        1,
        description="Event QoS, 1 or 2: an event leaves the outbox only once the broker acknowledged it.",
    )
    max_inflight: int = Field(
        20,
        ge=1,
        le=1000,
        description="Unacknowledged events at most; fewer if the broker's Receive Maximum is lower.",
    )
    stats_interval_s: float = Field(
        60.0,
        ge=1.0,
        le=86400.0,
        description="Seconds between two stats messages (latest values, never queued).",
    )
    discovery: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig, description="Home Assistant MQTT discovery."
    )
