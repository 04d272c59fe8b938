"""Home Assistant MQTT discovery: one retained device-based message, `<prefix>/device/<id>/config`.

The entities read the retained `state` topic (last class and confidence, mode, status, one counter and one
fill level per category the state reports) and send commands (a mode selector, one button per command
without arguments). Categories come from the state at announcement time, so the message follows the
model's labels and the bin's hardware instead of a list in code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from recyclex_edge import __version__
from recyclex_edge.mqtt.commands import ARGUMENTS, MODES
from recyclex_edge.mqtt.topics import Topics

_BUTTON_ICONS = {"reload-model": "mdi:brain", "reset-counters": "mdi:counter", "snapshot": "mdi:camera"}


def discovery_payload(
    topics: Topics, device_name: str, state: Mapping[str, Any], commands: Sequence[str]
) -> dict[str, Any]:
    """The discovery message for this bin, built from its current state and the commands it accepts."""
    device_id = topics.device_id
    components: dict[str, dict[str, Any]] = {}

    def add(key: str, platform: str, name: str, **options: Any) -> None:
        unique_id = f"{device_id}_{key}"
        components[unique_id] = {"p": platform, "name": name, "unique_id": unique_id, **options}

    add(
        "last_class",
        "sensor",
        "Last class",
        icon="mdi:recycle",
        value_template="{{ value_json.last_event.class if value_json.last_event else 'none' }}",
    )
    add(
        "last_confidence",
        "sensor",
        "Last confidence",
        unit_of_measurement="%",
        value_template=(
            "{{ (value_json.last_event.confidence * 100) | round(1) if value_json.last_event else None }}"
        ),
    )
    add("status", "sensor", "Status", icon="mdi:heart-pulse", value_template="{{ value_json.health }}")
    add(
        "outbox_lost",
        "sensor",
        "Events lost",
        icon="mdi:alert",
        entity_category="diagnostic",
        value_template="{{ value_json.outbox.lost }}",
    )
    if state.get("review") is not None:
        add(
            "review_backlog",
            "sensor",
            "Items to review",
            icon="mdi:tag-search",
            value_template="{{ value_json.review.backlog if value_json.review else None }}",
        )
    for category in state.get("counters", {}):
        add(
            f"count_{category}",
            "sensor",
            f"{category} items",
            state_class="total_increasing",
            value_template=f"{{{{ value_json.counters[{category!r}] }}}}",
        )
    for category in state.get("fill_levels", {}):
        add(
            f"fill_{category}",
            "sensor",
            f"{category} fill level",
            unit_of_measurement="%",
            value_template=f"{{{{ value_json.fill_levels[{category!r}] }}}}",
        )
    if "mode" in commands:
        add(
            "mode",
            "select",
            "Mode",
            options=list(MODES),
            command_topic=topics.command("mode"),
            command_template='{"mode": "{{ value }}"}',
            value_template="{{ value_json.mode }}",
        )
    for command in commands:
        if not ARGUMENTS[command] and command in _BUTTON_ICONS:
            add(
                f"button_{command}",
                "button",
                command.replace("-", " ").capitalize(),
                command_topic=topics.command(command),
                payload_press="{}",
                icon=_BUTTON_ICONS[command],
            )
    return {
        "dev": {
            "ids": [device_id],
            "name": device_name or f"RecycleX {device_id}",
            "mf": "RecycleX",
            "mdl": "RecycleX Edge smart bin",
            "sw": __version__,
        },
        "o": {"name": "recyclex-edge", "sw": __version__},
        "cmps": components,
        "state_topic": topics.state,
        "availability_topic": topics.availability,
        "qos": 1,
    }
