"""The sorting pipeline: settled item -> burst of frames -> classifier -> decision -> sorter -> event.

One named thread runs it, so items are handled strictly one at a time, in the order they settle, and
inference never runs on the event loop. Each item becomes exactly one event, handed to every sink (the
durable MQTT outbox first, then the live WebSocket hub and the recent-events list).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from recyclex_edge.camera import Frame
from recyclex_edge.classifier import Classifier
from recyclex_edge.config import DecisionConfig
from recyclex_edge.decision import UNCERTAIN, ConfidencePolicy, combine
from recyclex_edge.detector import DepositDetector, DepositEventKind, FrameFeed
from recyclex_edge.fieldlearning import FieldLearning
from recyclex_edge.history import History
from recyclex_edge.ids import new_event_id
from recyclex_edge.notify import Liveness
from recyclex_edge.sorter import Sorter

log = logging.getLogger(__name__)

LIVENESS_NAME = "inference"
_POLL_S = 0.5  # longest wait for a detector event, so stop requests and liveness stay prompt

EventSink = Callable[[dict[str, Any]], None]


class Mode(StrEnum):
    SORT = "sort"  # classify and move the flaps
    PASS_THROUGH = "pass-through"  # classify and report, but do not move anything
    MAINTENANCE = "maintenance"  # ignore deposits: a technician has the bin open


@dataclass
class PipelineStats:
    items: int = 0
    uncertain: int = 0
    classify_errors: int = 0  # classifications that raised (the model registry's watch counts them)
    last_event_id: str | None = None
    last_event_ts: str | None = None
    inference_ms: list[float] = field(default_factory=list)  # the last few bursts, for stats


class SortingPipeline:
    """Consumes settled deposits and produces sorting events.

    >>> pipeline = SortingPipeline(camera, detector, classifier, policy, sorter, decision_config,
    ...                            device_id="bin-1", sinks=[outbox.submit], liveness=liveness)
    >>> pipeline.start(); ...; pipeline.stop()
    """

    def __init__(
        self,
        frames: FrameFeed,
        detector: DepositDetector,
        classifier: Classifier,
        policy: ConfidencePolicy,
        sorter: Sorter | None,
        config: DecisionConfig,
        *,
        device_id: str,
        sinks: list[EventSink],
        liveness: Liveness | None = None,
        history: History | None = None,
        site: FieldLearning | None = None,
    ) -> None:
        self._frames = frames
        self._detector = detector
        self._model = (classifier, policy)
        self._shadow: tuple[Classifier, ConfidencePolicy] | None = None
        self._sorter = sorter
        self._config = config
        self._device_id = device_id
        self._sinks = sinks
        self._liveness = liveness
        self._history = history
        self._site = site
        self.mode = Mode.SORT
        self.stats = PipelineStats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sorting-pipeline", daemon=True)
        if liveness is not None:
            liveness.register(LIVENESS_NAME)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking items; an item being sorted is aborted safely (flaps close, diverter home)."""
        self._stop.set()
        if self._sorter is not None:
            self._sorter.abort()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def use_classifier(self, classifier: Classifier, policy: ConfidencePolicy) -> None:
        """Swap in a reloaded model; the item in progress finishes with the one it started with."""
        self._model = (classifier, policy)

    def use_shadow(self, shadow: tuple[Classifier, ConfidencePolicy] | None) -> None:
        """A second model that judges every item after the active one has sorted it, and never moves a
        flap; its verdict goes into the event as `shadow`. None: no shadow."""
        self._shadow = shadow

    def set_mode(self, mode: Mode) -> None:
        if mode != self.mode:
            log.info("mode %s -> %s", self.mode.value, mode.value)
        self.mode = mode

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._liveness is not None:
                self._liveness.beat(LIVENESS_NAME)
            event = self._detector.next_event(_POLL_S)
            if event is None or event.kind is not DepositEventKind.SETTLED:
                continue
            if self.mode is Mode.MAINTENANCE:
                log.info("deposit ignored: maintenance mode")
                continue
            try:
                self._handle_item(event.timestamp_s, event.sequence)
            except Exception:
                # One bad item must not stop the bin; the sorter has already gone to its safe state.
                log.exception("handling a deposit failed; waiting for the next one")

    def _burst(self, after_sequence: int) -> list[Frame]:
        frames: list[Frame] = []
        deadline_s = time.monotonic() + self._config.burst_timeout_s
        while len(frames) < self._config.burst_frames and not self._stop.is_set():
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                break
            frame = self._frames.wait_for_frame(after_sequence, timeout_s=min(remaining_s, _POLL_S))
            if frame is not None:
                frames.append(frame)
                after_sequence = frame.sequence
        return frames

    def _handle_item(self, settled_at_s: float, settled_sequence: int | None) -> None:
        burst = self._burst(-1 if settled_sequence is None else settled_sequence - 1)
        if not burst:
            log.warning(
                "an item settled but no frame came within %.1f s; not sorted", self._config.burst_timeout_s
            )
            return
        classifier, policy = self._model
        images = [frame.image for frame in burst]
        try:
            results = classifier.classify_batch(images)
        except Exception:
            self.stats.classify_errors += 1
            raise
        verdict = combine(results)
        adaptation_id, judged = None, None
        if self._site is not None:
            # The site adaptation (when one is in use) re-weighs the model's opinion and brings its own
            # recalibrated threshold; the classifier itself never knows. If it fails, the model decides.
            try:
                judged = self._site.adapt(verdict)
            except Exception:
                log.exception("the site adaptation failed; the model's own judgement decides this item")
            else:
                verdict, policy, adaptation_id = judged.verdict, judged.policy, judged.adaptation_id
        decision = policy.decide(verdict.label, verdict.confidence)
        decided_at_s = time.monotonic()

        actuated_at_s: float | None = None
        if self.mode is Mode.PASS_THROUGH:
            action = "pass-through"
        elif self._sorter is None:
            action = "skipped:sorter-unavailable"
        else:
            result = self._sorter.sort(decision)
            actuated_at_s = result.actuated_at_s
            action = f"{result.outcome.value}:{result.bin}"

        event = {
            "schema": 1,
            "id": new_event_id(),
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "device": self._device_id,
            "class": verdict.label,
            "confidence": round(verdict.confidence, 6),
            "probabilities": {label: round(p, 6) for label, p in verdict.probabilities.items()},
            "decision": decision,
            "action": action,
            "model": {
                "name": classifier.card.name,
                "version": classifier.card.version,
                "adaptation": adaptation_id,
            },
            "timing": {
                "frames": len(burst),
                "inference_ms": round(sum(r.inference_ms for r in results), 3),
                "settled_to_decided_ms": round((decided_at_s - settled_at_s) * 1000, 3),
                "decided_to_actuated_ms": (
                    None if actuated_at_s is None else round((actuated_at_s - decided_at_s) * 1000, 3)
                ),
            },
        }
        shadow = self._shadow_verdict(images)
        if shadow is not None:
            event["shadow"] = shadow
        self._record(event, results[0].inference_ms)
        truth = burst[0].scene.label if burst[0].scene is not None else None
        log.info(
            "item %s: %s %.3f -> %s, %s%s",
            event["id"],
            verdict.label,
            verdict.confidence,
            decision,
            action,
            f" (replayed photo of {truth})" if truth else "",
        )
        if self._history is not None:
            # Before the sinks: a thumbnail must exist by the time the WebSocket announces the event.
            try:
                self._history.record(event, burst[0].image)
            except Exception:
                log.exception("the history failed to record %s", event["id"])
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                log.exception("an event sink failed for %s", event["id"])
        if self._site is not None and judged is not None:
            try:
                self._site.observe(event, [frame.image for frame in burst], judged)
            except Exception:
                log.exception("field learning failed to observe %s", event["id"])

    def _shadow_verdict(self, images: list[Any]) -> dict[str, Any] | None:
        if self._shadow is None:
            return None
        classifier, policy = self._shadow
        try:
            verdict = combine(classifier.classify_batch(images))
        except Exception:
            log.exception(
                "the shadow model %s failed on an item; the item is unaffected", classifier.card.version
            )
            return None
        return {
            "version": classifier.card.version,
            "class": verdict.label,
            "confidence": round(verdict.confidence, 6),
            "decision": policy.decide(verdict.label, verdict.confidence),
        }

    def _record(self, event: dict[str, Any], inference_ms: float) -> None:
        stats = self.stats
        stats.items += 1
        stats.uncertain += event["decision"] == UNCERTAIN
        stats.last_event_id = event["id"]
        stats.last_event_ts = event["ts"]
        stats.inference_ms = [*stats.inference_ms[-49:], inference_ms]
