"""Every MQTT topic the bin uses, derived from one prefix so that no module builds topic strings itself."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    """Topics of one bin. `prefix` defaults to `recyclex/<device_id>`."""

    prefix: str
    device_id: str
    discovery_prefix: str = "homeassistant"

    @classmethod
    def for_device(cls, device_id: str, prefix: str = "", discovery_prefix: str = "homeassistant") -> Topics:
        return cls(prefix or f"recyclex/{device_id}", device_id, discovery_prefix)

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def state(self) -> str:
        return f"{self.prefix}/state"

    @property
    def stats(self) -> str:
        return f"{self.prefix}/stats"

    @property
    def commands(self) -> str:
        """Subscription filter for every command; one level only, so it never matches `.../result`."""
        return f"{self.prefix}/cmd/+"

    def command(self, name: str) -> str:
        return f"{self.prefix}/cmd/{name}"

    def command_result(self, name: str) -> str:
        return f"{self.prefix}/cmd/{name}/result"

    def command_name(self, topic: str) -> str | None:
        """The command a topic addresses, or None when it is not a command topic."""
        head = f"{self.prefix}/cmd/"
        if topic.startswith(head) and "/" not in topic[len(head) :]:
            return topic[len(head) :]
        return None

    @property
    def discovery(self) -> str:
        return f"{self.discovery_prefix}/device/{self.device_id}/config"

    def entity_discovery(self, platform: str, key: str) -> str:
        """Per-entity discovery (Home Assistant before 2024.11); `key` is unique per bin."""
        return f"{self.discovery_prefix}/{platform}/{self.device_id}/{key}/config"

    @property
    def entity_discoveries(self) -> str:
        """Subscription filter for every per-entity discovery topic of this bin."""
        return f"{self.discovery_prefix}/+/{self.device_id}/+/config"

    @property
    def homeassistant_status(self) -> str:
        return f"{self.discovery_prefix}/status"
