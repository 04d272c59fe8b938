"""Prometheus metrics of the API, in a registry of the app's own (never the global one).

A registry per app keeps tests (and any second app in the process) from colliding over metric names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import InfoMetricFamily

from recyclex_edge.fieldlearning import DriftState
from recyclex_edge.model_card import ModelCard

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_INFERENCE_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class _ModelInfo:
    """recyclex_model_info: the model in use and the site adaptation applied to it ("none" without one).

    A collector rather than an Info so the adaptation, which a refit may change at any time, is read when
    scraped instead of pushed from the refit thread.
    """

    def __init__(self) -> None:
        self.card: ModelCard | None = None
        self.adaptation_id: Callable[[], str | None] = lambda: None

    def collect(self) -> Iterator[InfoMetricFamily]:
        card = self.card
        if card is None:
            return
        family = InfoMetricFamily(
            "recyclex_model", "The loaded model, and the site adaptation applied to it."
        )
        labels = {"name": card.name, "version": card.version, "sha256": card.sha256}
        family.add_metric([], {**labels, "adaptation": self.adaptation_id() or "none"})
        yield family


class Metrics:
    """Everything /metrics shows. Metric objects are thread-safe, so workers may update them too."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "recyclex_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recyclex_http_request_duration_seconds",
            "Time to answer an HTTP request (WebSockets: the whole session).",
            ["route"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.inference = Histogram(
            "recyclex_inference_seconds",
            "Model time per classification (preprocessing and interpreter).",
            buckets=_INFERENCE_BUCKETS_S,
            registry=self.registry,
        )
        self.classifications = Counter(
            "recyclex_classifications",
            "Classifications made by the API, by predicted class.",
            ["class"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "recyclex_inference_queue_depth",
            "Inferences queued or running for the API.",
            registry=self.registry,
        )
        self.rejected = Counter(
            "recyclex_http_rejected",
            "Requests refused on purpose, by reason: rate_limited (429), queue_full (503), too_large, ...",
            ["route", "reason"],
            registry=self.registry,
        )
        self.cache_lookups = Counter(
            "recyclex_cache_lookups",
            "Prediction cache lookups, by result (hit or miss).",
            ["result"],
            registry=self.registry,
        )
        self.live_dropped = Counter(
            "recyclex_live_frames_dropped",
            "Live frames not classified: superseded by a newer frame, or over the fps limit.",
            ["reason"],
            registry=self.registry,
        )
        # Empty until a model is loaded: the inference service names it (again on reload-model).
        self._model = _ModelInfo()
        self.registry.register(self._model)

    def watch_adaptation(self, adaptation_id: Callable[[], str | None]) -> None:
        """recyclex_model_info's `adaptation` label: the site adaptation in use, read at each scrape."""
        self._model.adaptation_id = adaptation_id

    def watch_drift(self, state: Callable[[], DriftState | None]) -> None:
        """Drift gauges read from the field-learning drift watch at each scrape."""

        def read(pick: Callable[[DriftState], float | None]) -> Callable[[], float]:
            def value() -> float:
                current = state()
                picked = pick(current) if current is not None else None
                return float("nan") if picked is None else picked

            return value

        Gauge(
            "recyclex_classifier_drift",
            "1 while the rolling uncertain rate or mean confidence has drifted from the bin's baseline "
            "(label items on the Review page); else 0.",
            registry=self.registry,
        ).set_function(read(lambda s: float(s.drifting)))
        Gauge(
            "recyclex_rolling_uncertain_rate",
            "Share of the last capture.drift.window_items items decided 'uncertain'.",
            registry=self.registry,
        ).set_function(read(lambda s: s.uncertain_rate))
        Gauge(
            "recyclex_rolling_mean_confidence",
            "Mean confidence over the last capture.drift.window_items items.",
            registry=self.registry,
        ).set_function(read(lambda s: s.mean_confidence))

    def set_model(self, card: ModelCard) -> None:
        """Name the model in use (again after reload-model).

        recyclex_model_info's labels are built here alone: site learning adds its `adaptation` (which
        adaptation of the model is applied, "none" without one) as one more key of this dict.
        """
        self._model.card = card

    def render(self) -> bytes:
        return generate_latest(self.registry)
