"""MQTT for facility dashboards: events from the durable outbox, availability, state, stats, Home Assistant
discovery and commands. `MqttBridge` is the whole interface; docs/mqtt.md describes topics and payloads."""

from recyclex_edge.mqtt.bridge import MqttBridge
from recyclex_edge.mqtt.commands import CommandHandler
from recyclex_edge.mqtt.topics import Topics

__all__ = ["CommandHandler", "MqttBridge", "Topics"]
