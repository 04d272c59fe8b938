"""The bin's own Prometheus metrics: what it sorted, how full its bins are, whether its parts keep up.

Two kinds, both cheap for a scrape:
- per item, counted where the item happens: `BinMetrics.observe_event` is an event sink of the sorting
  pipeline (items by class, decision and action; settled -> decided -> actuated latencies; the rolling
  uncertain ratio);
- everything else is a counter or reading the stages keep anyway (camera frames, sorter moves, outbox
  depth, housekeeping's last disk and temperature readings), read at scrape time by a custom collector:
  attribute reads, no I/O, no query.

The API's own metrics (requests, latency, inference, `recyclex_model_info`) live in
`recyclex_edge.api.metrics`; both share the app's registry, so `/metrics` shows them together.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from recyclex_edge.decision import UNCERTAIN
from recyclex_edge.health import HealthRegistry, Status

# Settled -> decided is a burst of frames plus inference (0.1-2 s); decided -> actuated is the sorter
# taking its lock and homing first if needed (milliseconds to a few seconds).
_SETTLED_TO_DECIDED_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_DECIDED_TO_ACTUATED_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNCERTAIN_WINDOW_ITEMS = 100

# recyclex_health_status values. A disabled component is not a fault: 0, with recyclex_component_enabled 0.
HEALTH_VALUES = {Status.OK: 0, Status.DISABLED: 0, Status.DEGRADED: 1, Status.FAILING: 2}


class _Camera(Protocol):
    def stats(self) -> Any: ...


class _Detector(Protocol):
    @property
    def deposits(self) -> int: ...


class _Sorter(Protocol):
    @property
    def moves(self) -> Mapping[str, int]: ...
    @property
    def jams(self) -> int: ...

    def fill_levels(self) -> dict[str, float | None]: ...


class _Outbox(Protocol):
    @property
    def depth(self) -> int: ...
    @property
    def oldest_age_s(self) -> float: ...
    @property
    def lost(self) -> int: ...


class _Mqtt(Protocol):
    @property
    def connected(self) -> bool: ...
    @property
    def reconnects(self) -> int: ...


@dataclass
class Vitals:
    """The machine's last readings, written by housekeeping (every 30 s), read by the collector."""

    disk_free_bytes: int | None = None
    soc_temperature_c: float | None = None


class BinMetrics(Collector):
    """Registers itself (and its item metrics) in `registry`; the daemon attaches the stages it runs.

    >>> metrics = BinMetrics(app[METRICS].registry, health)
    >>> metrics.attach(camera=camera, detector=detector, sorter=sorter, outbox=outbox, mqtt=bridge)
    >>> pipeline sinks: [..., metrics.observe_event]
    """

    def __init__(self, registry: CollectorRegistry, health: HealthRegistry) -> None:
        self._health = health
        self.vitals = Vitals()
        self.camera: _Camera | None = None
        self.detector: _Detector | None = None
        self.sorter: _Sorter | None = None
        self.outbox: _Outbox | None = None
        self.mqtt: _Mqtt | None = None
        self._lock = threading.Lock()
        self._recent_uncertain: deque[bool] = deque(maxlen=UNCERTAIN_WINDOW_ITEMS)
        self.items = Counter(
            "recyclex_items",
            "Items handled by the sorting pipeline, by predicted class, decision (a label or 'uncertain') "
            "and action outcome (sorted, dry_run, blocked, jammed, aborted, fault, pass-through, skipped).",
            ["class", "decision", "action"],
            registry=registry,
        )
        self.settled_to_decided = Histogram(
            "recyclex_item_settled_to_decided_seconds",
            "From the item settling to the decision (frame burst and inference).",
            buckets=_SETTLED_TO_DECIDED_BUCKETS_S,
            registry=registry,
        )
        self.decided_to_actuated = Histogram(
            "recyclex_item_decided_to_actuated_seconds",
            "From the decision to the sorter's first actuator command (items that moved something).",
            buckets=_DECIDED_TO_ACTUATED_BUCKETS_S,
            registry=registry,
        )
        registry.register(self)

    def attach(
        self,
        *,
        camera: _Camera | None = None,
        detector: _Detector | None = None,
        sorter: _Sorter | None = None,
        outbox: _Outbox | None = None,
        mqtt: _Mqtt | None = None,
    ) -> None:
        """The stages to read at scrape time; a stage left None is not running and shows no series."""
        self.camera, self.detector, self.sorter, self.outbox, self.mqtt = (
            camera,
            detector,
            sorter,
            outbox,
            mqtt,
        )

    def observe_event(self, event: Mapping[str, Any]) -> None:
        """A pipeline event sink: count the item and its latencies."""
        action = str(event["action"]).split(":", 1)[0]
        self.items.labels(str(event["class"]), str(event["decision"]), action).inc()
        timing = event.get("timing") or {}
        if (decided_ms := timing.get("settled_to_decided_ms")) is not None:
            self.settled_to_decided.observe(decided_ms / 1000.0)
        if (actuated_ms := timing.get("decided_to_actuated_ms")) is not None:
            self.decided_to_actuated.observe(actuated_ms / 1000.0)
        with self._lock:
            self._recent_uncertain.append(event["decision"] == UNCERTAIN)

    def uncertain_ratio(self) -> float | None:
        with self._lock:
            recent = list(self._recent_uncertain)
        return sum(recent) / len(recent) if recent else None

    # -- the collector -------------------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the series depend on what is attached; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        yield from self._health_metrics()
        uncertain = GaugeMetricFamily(
            "recyclex_uncertain_ratio",
            f"Share of the last {UNCERTAIN_WINDOW_ITEMS} items (or fewer, since start) decided "
            "'uncertain'; no sample before the first item.",
        )
        if (ratio := self.uncertain_ratio()) is not None:
            uncertain.add_metric([], ratio)
        yield uncertain
        if self.detector is not None:
            yield CounterMetricFamily(
                "recyclex_deposits", "Items that settled in the chute since start.", self.detector.deposits
            )
        if self.camera is not None:
            stats = self.camera.stats()
            yield CounterMetricFamily("recyclex_camera_frames", "Frames captured since start.", stats.frames)
            yield CounterMetricFamily(
                "recyclex_camera_stalls", "Times the camera delivered no frame for too long.", stats.stalls
            )
            yield CounterMetricFamily(
                "recyclex_camera_reconnects", "Times the camera was opened again.", stats.reconnects
            )
        if self.sorter is not None:
            yield from self._sorter_metrics(self.sorter)
        if self.outbox is not None:
            outbox = self.outbox
            yield GaugeMetricFamily(
                "recyclex_outbox_depth", "Events waiting for the broker's acknowledgement.", outbox.depth
            )
            yield GaugeMetricFamily(
                "recyclex_outbox_oldest_age_seconds",
                "How long the oldest unacknowledged event has waited (0 when none waits).",
                outbox.oldest_age_s,
            )
            yield CounterMetricFamily(
                "recyclex_outbox_lost",
                "Events dropped because the outbox was full, since its file was created.",
                outbox.lost,
            )
        if self.mqtt is not None:
            yield GaugeMetricFamily(
                "recyclex_mqtt_connected", "1 while connected to the broker.", int(self.mqtt.connected)
            )
            yield CounterMetricFamily(
                "recyclex_mqtt_reconnects", "Connections to the broker after the first.", self.mqtt.reconnects
            )
        # Described even before the first reading (or on a board without a sensor): no sample then.
        vitals = self.vitals
        disk = GaugeMetricFamily("recyclex_disk_free_bytes", "Free space in the state directory.")
        if vitals.disk_free_bytes is not None:
            disk.add_metric([], vitals.disk_free_bytes)
        yield disk
        soc = GaugeMetricFamily("recyclex_soc_temperature_celsius", "SoC temperature.")
        if vitals.soc_temperature_c is not None:
            soc.add_metric([], vitals.soc_temperature_c)
        yield soc

    def _health_metrics(self) -> Iterator[Metric]:
        status = GaugeMetricFamily(
            "recyclex_health_status",
            "Component health: 0 ok (or disabled), 1 degraded, 2 failing.",
            labels=["component"],
        )
        enabled = GaugeMetricFamily(
            "recyclex_component_enabled",
            "0 for a component the config turns off (MQTT disabled, no fill sensors), else 1.",
            labels=["component"],
        )
        for name, component in sorted(self._health.snapshot().items()):
            status.add_metric([name], HEALTH_VALUES[component.status])
            enabled.add_metric([name], int(component.status is not Status.DISABLED))
        yield status
        yield enabled

    def _sorter_metrics(self, sorter: _Sorter) -> Iterator[Metric]:
        moves = CounterMetricFamily(
            "recyclex_sorter_moves",
            "Sort sequences that drove the actuators, by bin (technicians' test moves included).",
            labels=["bin"],
        )
        for bin_name, count in sorted(dict(sorter.moves).items()):
            moves.add_metric([bin_name], count)
        yield moves
        yield CounterMetricFamily("recyclex_sorter_jams", "Times the diverter did not get home.", sorter.jams)
        fill = GaugeMetricFamily(
            "recyclex_fill_level_ratio",
            "How full each bin with a fill sensor is, 0 (empty) to 1 (full); absent without a reading.",
            labels=["bin"],
        )
        for bin_name, percent in sorted(sorter.fill_levels().items()):
            if percent is not None:
                fill.add_metric([bin_name], percent / 100.0)
        yield fill
