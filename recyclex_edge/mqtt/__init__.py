"""MQTT for facility dashboards: events from the durable outbox, availability, state, stats, Home Assistant
discovery and commands. `MqttBridge` is the whole interface; docs/mqtt.md describes topics and payloads."""

from typing import TYPE_CHECKING

from recyclex_edge.mqtt.commands import CommandHandler
from recyclex_edge.mqtt.topics import Topics

if TYPE_CHECKING:
    from recyclex_edge.mqtt.bridge import MqttBridge

__all__ = ["CommandHandler", "MqttBridge", "Topics"]


def __getattr__(name: str) -> object:
    # paho-mqtt (and the bridge) are loaded only by a bin that uses MQTT.
    if name == "MqttBridge":
        from recyclex_edge.mqtt.bridge import MqttBridge

        return MqttBridge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
