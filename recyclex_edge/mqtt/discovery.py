"""Home Assistant MQTT discovery: one retained device-based message, `<prefix>/device/<id>/config`, or
(`mqtt.discovery.per_entity`, for Home Assistant before 2024.11) one per entity.

The entities read the retained `state` topic (last class and confidence, mode, status, one counter and one
fill level per category the state reports) and send commands (a mode selector, one button per command
without arguments). Categories come from the state, which lists every category the bin can count (the
model's labels, its configured bins and `uncertain`) from the start, 0 included: the set of entities is
the same on a fresh bin, after `reset-counters` and after the first item of a new category, so Home
Assistant never has to remove one. Templates default to 0 (counters) or unknown (fill levels) anyway.

Device discovery (`<prefix>/device/...`) needs Home Assistant 2024.11 or newer; older ones get the same
entities from `<prefix>/<platform>/<id>/<key>/config`. The bridge clears whatever the other layout left
retained (`other_layout`), so switching never leaves Home Assistant two copies of an entity; it clears
only what it finds, because Home Assistant before 2024.11 warns about any message on a `device` topic,
even an empty one. The per-entity object ids (`count_glass`) differ from the device message's component
ids (`<id>_count_glass`), so clearing one layout never removes the other's entities. Every component
carries its own `qos`: Home Assistant ignores a root-level one.
"""

from __future__ import annotations

import json
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
        components[unique_id] = {"p": platform, "name": name, "unique_id": unique_id, "qos": 1, **options}

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
        state_class="measurement",
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
            f"{_title(category)} items",
            state_class="total_increasing",
            value_template=f"{{{{ value_json.counters[{category!r}] | default(0) }}}}",
        )
    for category in state.get("fill_levels", {}):
        add(
            f"fill_{category}",
            "sensor",
            f"{_title(category)} fill level",
            unit_of_measurement="%",
            state_class="measurement",
            # 'None' is Home Assistant's word for unknown: a sensor without a reading yet.
            value_template=f"{{{{ value_json.fill_levels[{category!r}] | default(None) }}}}",
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
    }


def discovery_messages(
    topics: Topics,
    device_name: str,
    state: Mapping[str, Any],
    commands: Sequence[str],
    *,
    per_entity: bool,
) -> list[tuple[str, str]]:
    """(topic, payload) to publish retained: the device message, or one message per entity."""
    payload = discovery_payload(topics, device_name, state, commands)
    if not per_entity:
        return [(topics.discovery, json.dumps(payload))]
    messages = []
    for unique_id, component in payload["cmps"].items():
        config = {key: value for key, value in component.items() if key != "p"}
        config.update(dev=payload["dev"], o=payload["o"], availability_topic=payload["availability_topic"])
        if component["p"] != "button":  # a button has no state
            config["state_topic"] = payload["state_topic"]
        key = unique_id.removeprefix(f"{topics.device_id}_")
        messages.append((topics.entity_discovery(component["p"], key), json.dumps(config)))
    return messages


def other_layout(topics: Topics, *, per_entity: bool) -> str:
    """Subscription filter for the discovery layout not in use: anything retained there is stale."""
    return topics.discovery if per_entity else topics.entity_discoveries


def _title(category: str) -> str:
    return category.replace("_", " ").capitalize()
