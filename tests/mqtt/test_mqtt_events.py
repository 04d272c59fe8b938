"""Event payloads without a broker: what the bridge fills in, keeps and refuses."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from recyclex_edge.mqtt.events import prepare_event
from tests.mqtt.support import make_event

FILLED_IN = ("schema", "id", "ts", "device")


def bare_event() -> dict[str, Any]:
    return {key: value for key, value in make_event(0).items() if key not in FILLED_IN}


def test_the_bridge_fills_in_what_the_daemon_leaves_out() -> None:
    complete, payload = prepare_event(bare_event(), "bin-7")
    assert json.loads(payload) == complete
    assert complete["schema"] == 1 and complete["device"] == "bin-7"
    assert len(complete["id"]) == 26 and complete["ts"].endswith("+00:00")


def test_the_bridge_keeps_what_the_daemon_gives() -> None:
    given = make_event(0, device_id="bin-9")
    complete, payload = prepare_event(given, "bin-7")
    assert complete == given
    assert prepare_event(given, "bin-7")[1] == payload, "the same event always gives the same bytes"


@pytest.mark.parametrize(
    "broken",
    [
        {key: value for key, value in bare_event().items() if key != "decision"},
        {**bare_event(), "confidence": math.nan},
    ],
)
def test_a_malformed_event_is_a_programming_error(broken: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        prepare_event(broken, "bin-7")
