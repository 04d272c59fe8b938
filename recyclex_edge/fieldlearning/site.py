"""`FieldLearning`: the one door of the field-learning room. The pipeline hands it every verdict and
event; the API, MQTT and the CLI label through it; it keeps the capture store, the site adaptation and
the drift watch. The classifier knows nothing of it.

    pipeline:  judged = site.adapt(verdict)          # base -> site probabilities, policy, adaptation id
               site.observe(event, frames, judged)   # drift; keeps the item if doubtful (or sampled)
    API/MQTT:  site.set_label(event_id, "glass", by="token:alice")   # refit follows, debounced
    issue 15:  site.labelled_items()                 # what people said each item really was

Every write happens off the pipeline thread (a bounded queue, oldest kept, newest dropped when full);
a store that cannot be written degrades the `capture` health component and sorting goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from recyclex_edge.classifier import Classifier
from recyclex_edge.config import CaptureConfig, DecisionConfig
from recyclex_edge.decision import UNCERTAIN, ConfidencePolicy, Verdict, combine
from recyclex_edge.errors import ImageDecodeError, RecycleXError
from recyclex_edge.fieldlearning.adaptation import Adaptation, FitResult, fit
from recyclex_edge.fieldlearning.drift import DriftMonitor, DriftState
from recyclex_edge.fieldlearning.store import NOT_WASTE, CapturedItem, CaptureError, CaptureStore, Features
from recyclex_edge.health import HealthRegistry, Status
from recyclex_edge.imaging import decode_image

log = logging.getLogger("recyclex_edge.fieldlearning")

CAPTURE_COMPONENT = "capture"
ADAPTATION_COMPONENT = "adaptation"
CAPTURES_DIR = "captures"
ADAPTATION_FILE = "adaptation.npz"
FIT_FILE = "last-fit.json"
_QUEUE_SIZE = (
    4  # items (bursts of frames) waiting to be written; a slow card drops the newest, never blocks sorting
)
_FULL_SHARE = 0.9  # labelled items filling this share of the quota: health says export them


@dataclass(frozen=True)
class Judgement:
    """A verdict as this bin judges it: the site's probabilities, its policy and the adaptation used."""

    verdict: Verdict
    base: Verdict
    policy: ConfidencePolicy
    adaptation_id: str | None


@dataclass(frozen=True)
class LabelledItem:
    """One item a person labelled (the read-only view other rooms, e.g. shadow runs, may use)."""

    event_id: str
    label: str
    predicted: str
    model_version: str
    labelled_by: str | None
    labelled_at: str | None


def sharpest(frames: Sequence[np.ndarray]) -> np.ndarray:
    """The frame with the most detail (variance of the Laplacian), the one worth a person's look."""

    def detail(frame: np.ndarray) -> float:
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        return float(cv2.Laplacian(grey, cv2.CV_64F).var())

    return max(frames, key=detail)


class FieldLearning:
    """Capture, labels, site adaptation and drift for one bin.

    >>> site = FieldLearning(config.capture, config.decision, state_dir, health=health)
    >>> site.use_classifier(classifier); site.start()
    >>> ...; site.close()
    """

    def __init__(
        self,
        config: CaptureConfig,
        decision: DecisionConfig,
        state_dir: Path,
        *,
        health: HealthRegistry | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._decision = decision
        self.folder = Path(state_dir) / CAPTURES_DIR
        self._health = health
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._classifier: Classifier | None = None
        self._base_policy: ConfidencePolicy | None = None
        self._adaptation: Adaptation | None = None
        self._site_policy: ConfidencePolicy | None = None
        self._last_reason: str | None = None  # what the last fit found, for people
        self._drift: DriftMonitor | None = None
        self._drifting = False
        self._classifier_detail = ""
        self.dropped = 0  # items not kept because the writer was behind
        self.store: CaptureStore | None = None
        self._store_problem: str | None = None
        self._queue: queue.Queue[tuple[dict[str, Any], Sequence[np.ndarray], Features, str] | None] = (
            queue.Queue(_QUEUE_SIZE)
        )
        self._refit_due: float | None = None
        self._adaptation_stamp: tuple[int, int] | None = None
        self._refit_wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.on_change: Callable[[], None] | None = None  # e.g. republish the MQTT state
        # Told of each label a person gives (event id, label), e.g. the model registry's shadow tally.
        self.on_label: Callable[[str, str], object] | None = None
        self._open_store()

    # -- lifecycle ------------------------------------------------------------------------------------

    def _open_store(self) -> None:
        if not self.config.enabled or self.store is not None:
            return
        try:
            self.store = CaptureStore(
                self.folder,
                max_bytes=self.config.max_mib * 1024 * 1024,
                retention_s=self.config.retention_days * 86400.0,
            )
            removed = self.store.remove_orphans()
            if removed:
                log.info("removed %d photo(s) without a row from %s", removed, self.store.images)
            self._store_problem = None
        except CaptureError as error:
            self._store_failed(error)
        self._report_capture()

    def start(self) -> None:
        """The writer and refit threads (the CLI uses the store and `refit()` without them)."""
        for name, target in (("capture-writer", self._write_loop), ("site-refit", self._refit_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stopping.set()
        self._refit_wake.set()
        if self._threads:
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=5.0)  # after the items already queued
        for thread in self._threads:
            thread.join(10.0)
        if self.store is not None:
            self.store.close()

    def use_classifier(self, classifier: Classifier) -> None:
        """The model in use (again after reload-model): its adaptation is loaded, or refitted for it."""
        card = classifier.card
        base = ConfidencePolicy.for_model(classifier, self._decision)
        adaptation = self._load_adaptation(classifier)
        with self._lock:
            self._classifier = classifier
            self._base_policy = base
            self._set_adaptation(adaptation)
            self._drift = DriftMonitor(self.config.drift, self.folder / "baseline.json", card.sha256)
            self._drifting = False
        if adaptation is None and self.config.adaptation.enabled and self.store is not None:
            self.request_refit(delay_s=0.0)  # labelled items may be waiting (another model, a lost file)
        self._report_adaptation()

    def _stamp(self) -> tuple[int, int] | None:
        """When and how big the stored adaptation is: another process (`labels import`) may replace it."""
        try:
            status = (self.folder / ADAPTATION_FILE).stat()
        except OSError:
            return None
        return status.st_mtime_ns, status.st_size

    def _load_adaptation(self, classifier: Classifier) -> Adaptation | None:
        path = self.folder / ADAPTATION_FILE
        self._adaptation_stamp = self._stamp()
        try:
            last = json.loads((self.folder / FIT_FILE).read_text())
            if last.get("model_sha256") == classifier.card.sha256:
                self._last_reason = str(last["reason"])
        except (OSError, ValueError, KeyError, AttributeError):
            self._last_reason = None
        if not self.config.adaptation.enabled or not path.is_file():
            return None
        try:
            adaptation = Adaptation.load(path)
        except (OSError, ValueError, KeyError) as error:
            log.warning("the stored site adaptation %s cannot be read (%s); it will be refitted", path, error)
            return None
        if adaptation.model_sha256 != classifier.card.sha256:
            log.info(
                "the stored site adaptation %s was fitted for model %s; the labelled items are re-embedded "
                "with %s %s and it is refitted",
                adaptation.id,
                adaptation.model_version,
                classifier.card.name,
                classifier.card.version,
            )
            return None
        return adaptation

    def _set_adaptation(self, adaptation: Adaptation | None) -> None:
        self._adaptation = adaptation
        self._site_policy = None
        if adaptation is not None and self._classifier is not None:
            decision = self._decision
            threshold = decision.threshold
            if threshold is None:
                threshold = adaptation.threshold
            self._site_policy = ConfidencePolicy(
                self._classifier.labels, threshold, decision.class_thresholds
            )

    # -- the pipeline's side --------------------------------------------------------------------------

    @property
    def adaptation(self) -> Adaptation | None:
        return self._adaptation

    def adaptation_id(self) -> str | None:
        """The id of the adaptation in use, or None (for /metrics, read at each scrape)."""
        adaptation = self._adaptation
        return adaptation.id if adaptation is not None else None

    def adapt(self, verdict: Verdict) -> Judgement:
        """The verdict with the site adaptation applied (when there is one) and the policy to decide by."""
        with self._lock:
            adaptation, policy, base_policy = self._adaptation, self._site_policy, self._base_policy
            labels = self._classifier.labels if self._classifier is not None else tuple(verdict.probabilities)
        if base_policy is None:
            raise RecycleXError("field learning has no classifier yet; call use_classifier() first")
        if adaptation is None or policy is None or not adaptation.accepts(verdict.embedding):
            return Judgement(verdict, verdict, base_policy, None)
        base = np.array([verdict.probabilities[label] for label in labels])
        site = adaptation.apply(base, verdict.embedding)[0]
        best = int(np.argmax(site))
        probabilities = {label: float(p) for label, p in zip(labels, site, strict=True)}
        adapted = Verdict(labels[best], float(site[best]), probabilities, verdict.frames, verdict.embedding)
        return Judgement(adapted, verdict, policy, adaptation.id)

    def judge_classification(self, frames: Sequence[np.ndarray]) -> tuple[Judgement, str]:
        """Classify frames of one item and decide as the bin would (the CLI's `classify --config`)."""
        classifier = self._classifier
        if classifier is None:
            raise RecycleXError("field learning has no classifier yet; call use_classifier() first")
        judged = self.adapt(combine(classifier.classify_batch(list(frames))))
        return judged, judged.policy.decide(judged.verdict.label, judged.verdict.confidence)

    def observe(self, event: dict[str, Any], frames: Sequence[np.ndarray], judged: Judgement) -> None:
        """After each item: the drift watch, and the item queued for the store if it is worth keeping."""
        uncertain = event["decision"] == UNCERTAIN
        with self._lock:
            drift = self._drift
            classifier = self._classifier
        if drift is not None:
            drift.observe(uncertain, float(event["confidence"]))
            self._report_drift(drift.state())
        if self.store is None or classifier is None or not frames:
            return
        if not uncertain and self._rng.random() >= self.config.sample_rate:
            return
        base = judged.base
        features = Features(
            np.array([base.probabilities[label] for label in classifier.labels], dtype=np.float32),
            None if base.embedding is None else np.asarray(base.embedding, dtype=np.float32),
        )
        try:
            self._queue.put_nowait((event, frames, features, "uncertain" if uncertain else "sample"))
        except queue.Full:
            self.dropped += 1

    def _write_loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            event, frames, features, reason = job
            store, classifier = self.store, self._classifier
            if store is None or classifier is None:
                continue
            frame = sharpest(frames)
            ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
            if not ok:
                continue
            height, width = frame.shape[:2]
            try:
                store.add(
                    event,
                    encoded.tobytes(),
                    features,
                    model_sha256=classifier.card.sha256,
                    reason=reason,
                    width=width,
                    height=height,
                )
            except CaptureError as error:
                self._store_failed(error)
            else:
                if self._store_problem is not None:
                    self._store_problem = None
                    log.info("the capture store is writable again")
            self._report_capture()
            if self.on_change is not None:
                self.on_change()

    def _store_failed(self, error: CaptureError) -> None:
        if self._store_problem != str(error):
            log.error("%s; sorting continues, items are not kept for labelling", error)
        self._store_problem = str(error)

    # -- labels ---------------------------------------------------------------------------------------

    def model_identity(self) -> dict[str, str]:
        classifier = self._classifier
        if classifier is None:
            return {}
        return {"name": classifier.card.name, "version": classifier.card.version}

    @property
    def label_names(self) -> tuple[str, ...]:
        """What a label may be: the model's classes, then 'none' (no item / not waste)."""
        classifier = self._classifier
        return (*(classifier.labels if classifier is not None else ()), NOT_WASTE)

    def _require_store(self) -> CaptureStore:
        if self.store is None:
            reason = self._store_problem or "capture.enabled is false"
            raise RecycleXError(f"the capture store is not available: {reason}")
        return self.store

    def check_label(self, label: str) -> None:
        if label not in self.label_names:
            raise RecycleXError(f"unknown label {label!r}; expected one of: {', '.join(self.label_names)}")

    def set_label(self, event_id: str, label: str | None, *, by: str) -> CapturedItem:
        """Label an item (None clears it: undo); a refit follows after `refit_delay_s` of quiet."""
        if label is not None:
            self.check_label(label)
        store = self._require_store()
        try:
            item = store.set_label(event_id, label, by=by)
        except CaptureError as error:
            self._store_failed(error)
            self._report_capture()
            raise
        if item is None:
            raise LookupError(f"no captured item {event_id!r}; it may have been evicted")
        log.info("item %s labelled %s by %s", event_id, label, by)
        if label is not None and self.on_label is not None:
            try:
                self.on_label(event_id, label)
            except Exception:
                log.exception("a label listener failed for %s", event_id)
        self.request_refit()
        self._report_capture()
        return item

    def commands(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        """The commands this room adds to the bin (MQTT `label`, and the page's command endpoint)."""

        def label(arguments: dict[str, Any]) -> dict[str, Any]:
            try:
                item = self.set_label(str(arguments["event_id"]), str(arguments["label"]), by="mqtt")
            except LookupError as error:
                raise RecycleXError(str(error)) from None
            return {"event_id": item.id, "label": item.label}

        return {"label": label}

    def labelled_items(self) -> list[LabelledItem]:
        """Every item a person labelled, oldest first: read-only, for shadow runs and exports."""
        return [
            LabelledItem(i.id, i.label, i.predicted, i.model_version, i.labelled_by, i.labelled_at)
            for i in self._require_store().labelled()
            if i.label is not None
        ]

    def import_photo(self, path: Path, label: str, *, by: str) -> str:
        """Classify one photo and keep it labelled (`labels import`); its new item id."""
        from recyclex_edge.ids import new_event_id

        self.check_label(label)
        store, classifier = self._require_store(), self._classifier
        assert classifier is not None
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ImageDecodeError(error.strerror or str(error)) from None
        frame = decode_image(data)
        judged, decision = self.judge_classification([frame])
        base = judged.base
        event = {
            "id": new_event_id(),
            "class": judged.verdict.label,
            "confidence": judged.verdict.confidence,
            "probabilities": {name: round(p, 6) for name, p in judged.verdict.probabilities.items()},
            "decision": decision,
            "model": {**self.model_identity(), "adaptation": judged.adaptation_id},
            "source": {"imported": str(path)},
        }
        if data[:3] == b"\xff\xd8\xff":
            jpeg = data  # kept as it came: re-embedding it later sees exactly what was fitted
        else:
            ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
            if not ok:
                raise ImageDecodeError(f"{path} could not be stored as JPEG")
            jpeg = encoded.tobytes()
        features = Features(
            np.array([base.probabilities[name] for name in classifier.labels], dtype=np.float32),
            None if base.embedding is None else np.asarray(base.embedding, dtype=np.float32),
        )
        height, width = frame.shape[:2]
        store.add(
            event,
            jpeg,
            features,
            model_sha256=classifier.card.sha256,
            reason="import",
            width=width,
            height=height,
            label=label,
            labelled_by=by,
        )
        return str(event["id"])

    # -- adaptation -----------------------------------------------------------------------------------

    def request_refit(self, delay_s: float | None = None) -> None:
        wait_s = self.config.adaptation.refit_delay_s if delay_s is None else delay_s
        self._refit_due = time.monotonic() + wait_s
        self._refit_wake.set()

    def _refit_loop(self) -> None:
        while not self._stopping.is_set():
            due = self._refit_due
            if due is None:
                self._refit_wake.wait()
                self._refit_wake.clear()
                continue
            remaining = due - time.monotonic()
            if remaining > 0:
                self._refit_wake.wait(remaining)
                self._refit_wake.clear()
                continue
            self._refit_due = None
            try:
                self.refit()
            except (RecycleXError, OSError, ValueError) as error:
                log.error("the site adaptation could not be refitted: %s", error)
            except Exception:
                log.exception("refitting the site adaptation failed")

    def _features_for(self, classifier: Classifier, items: list[CapturedItem]) -> dict[str, Features]:
        """Stored features under this model; items that lack them are re-embedded from their photo."""
        store = self._require_store()
        found = store.features(classifier.card.sha256, (i.id for i in items))
        missing = [i for i in items if i.id not in found]
        if missing:
            log.info("re-embedding %d labelled item(s) with %s", len(missing), classifier.card.version)
        for item in missing:
            jpeg = store.image(item.id)
            if jpeg is None:
                continue
            result = classifier.classify(decode_image(jpeg))
            features = Features(
                np.array([result.probabilities[name] for name in classifier.labels], dtype=np.float32),
                result.embedding,
            )
            store.put_features(item.id, classifier.card.sha256, features)
            found[item.id] = features
        return found

    def refit(self) -> FitResult:
        """Fit the site adaptation on the labelled items now, store it and use it if it beats the model."""
        classifier = self._classifier
        if classifier is None:
            raise RecycleXError("field learning has no classifier yet")
        card = classifier.card
        labelled = [i for i in self._require_store().labelled() if i.label in classifier.labels]
        features = self._features_for(classifier, labelled)
        usable = [i for i in labelled if i.id in features]
        probabilities = (
            np.stack([features[i.id].probabilities for i in usable]) if usable else np.zeros((0, 0))
        )
        embeddings: np.ndarray | None = None
        if card.embedding is not None and usable:
            vectors = [features[i.id].embedding for i in usable]
            if all(v is not None for v in vectors):
                embeddings = np.stack([v for v in vectors if v is not None])
        result = fit(
            classifier.labels,
            [i.label for i in usable if i.label is not None],
            probabilities,
            embeddings,
            model_sha256=card.sha256,
            model_version=card.version,
            max_missort_rate=self.config.adaptation.max_missort_rate,
            min_labelled=self.config.adaptation.min_labelled,
        )
        path = self.folder / ADAPTATION_FILE
        if result.adaptation is not None:
            result.adaptation.save(path)
            log.info("site adaptation %s in use: %s", result.adaptation.id, result.reason)
        else:
            path.unlink(missing_ok=True)
            log.info("no site adaptation in use: %s", result.reason)
        self._adaptation_stamp = self._stamp()
        try:  # what the fit found survives a restart too (and reaches `labels stats`)
            (self.folder / FIT_FILE).write_text(
                json.dumps({"model_sha256": card.sha256, "reason": result.reason})
            )
        except OSError as error:
            log.warning("could not record the fit's outcome: %s", error)
        with self._lock:
            if self._classifier is classifier:
                self._set_adaptation(result.adaptation)
            self._last_reason = result.reason
        self._report_adaptation()
        if self.on_change is not None:
            self.on_change()
        return result

    # -- what people see ------------------------------------------------------------------------------

    def drift_state(self) -> DriftState | None:
        drift = self._drift
        return drift.state() if drift is not None else None

    def summary(self) -> dict[str, Any]:
        """Backlog, counts, usage, adaptation and drift: the Review page, MQTT state and `labels stats`."""
        usage = None
        counts: dict[str, int] = {}
        if self.store is not None:
            try:
                usage, counts = self.store.usage(), self.store.counts()
            except CaptureError as error:
                self._store_failed(error)
        adaptation = self._adaptation
        last = self._last_reason
        drift = self.drift_state()
        return {
            "enabled": self.config.enabled,
            "store_problem": self._store_problem,
            "backlog": usage.unlabelled if usage is not None else 0,
            "labelled": usage.labelled if usage is not None else 0,
            "items_total": usage.items if usage is not None else 0,
            "bytes": usage.bytes if usage is not None else 0,
            "max_bytes": self.config.max_mib * 1024 * 1024,
            "counts": counts,
            "labels": list(self.label_names),
            "adaptation": adaptation.as_dict() if adaptation is not None else None,
            "adaptation_detail": self._adaptation_detail(adaptation, last),
            "drift": None
            if drift is None
            else {
                "drifting": drift.drifting,
                "items": drift.items,
                "uncertain_rate": drift.uncertain_rate,
                "mean_confidence": drift.mean_confidence,
                "baseline_uncertain_rate": drift.baseline_uncertain_rate,
                "baseline_confidence": drift.baseline_confidence,
                "detail": drift.detail,
            },
        }

    @staticmethod
    def _adaptation_detail(adaptation: Adaptation | None, last: str | None) -> str:
        if adaptation is not None:
            return f"{adaptation.id} in use ({adaptation.head.kind} head): {adaptation.summary()}"
        if last is not None:
            return f"none in use: {last}"
        return "none in use: no labelled items fitted yet"

    def housekeeping(self) -> None:
        """Retention, a store that failed to open tried again, health refreshed (every 30 s or so)."""
        self._open_store()
        classifier = self._classifier
        if classifier is not None and self._stamp() != self._adaptation_stamp:
            adaptation = self._load_adaptation(classifier)
            with self._lock:
                if self._classifier is classifier:
                    self._set_adaptation(adaptation)
            log.info(
                "the stored site adaptation changed (labels import?): %s",
                adaptation.summary() if adaptation is not None else "none in use",
            )
            self._report_adaptation()
        if self.store is not None:
            try:
                removed = self.store.expire()
                if removed:
                    log.info(
                        "removed %d captured item(s) older than %g days", removed, self.config.retention_days
                    )
            except CaptureError as error:
                self._store_failed(error)
        self._report_capture()

    def _report_capture(self) -> None:
        if self._health is None:
            return
        if not self.config.enabled:
            self._health.report(
                CAPTURE_COMPONENT, Status.OK, "off (capture.enabled is false)", critical=False
            )
            return
        if self.store is None or self._store_problem is not None:
            detail = f"{self._store_problem}; sorting continues, items are not kept for labelling"
            self._health.report(CAPTURE_COMPONENT, Status.DEGRADED, detail, critical=False)
            return
        try:
            usage = self.store.usage()
        except CaptureError as error:
            self._store_failed(error)
            self._report_capture()
            return
        detail = (
            f"{usage.items} item(s) kept ({usage.unlabelled} to review, {usage.labelled} labelled), "
            f"{usage.bytes / 2**20:.1f} of {usage.max_bytes / 2**20:.0f} MiB"
        )
        labelled_bytes_full = (
            usage.labelled and usage.unlabelled == 0 and usage.bytes >= _FULL_SHARE * usage.max_bytes
        )
        if labelled_bytes_full:
            detail += (
                "; full of labelled items: export them (recyclex-edge labels export) or raise capture.max_mib"
            )
            self._health.report(CAPTURE_COMPONENT, Status.DEGRADED, detail, critical=False)
            return
        if self.dropped:
            detail += f"; {self.dropped} item(s) not kept (writer behind)"
        self._health.report(CAPTURE_COMPONENT, Status.OK, detail, critical=False)

    def _report_adaptation(self) -> None:
        if self._health is None:
            return
        detail = self._adaptation_detail(self._adaptation, self._last_reason)
        if not self.config.adaptation.enabled:
            detail = "off (capture.adaptation.enabled is false)"
        self._health.report(ADAPTATION_COMPONENT, Status.OK, detail, critical=False)

    def _report_drift(self, state: DriftState) -> None:
        if self._health is None or state.drifting == self._drifting:
            return
        self._drifting = state.drifting
        if state.drifting:
            # The model's own detail (set by whoever loaded it) stays in front, and comes back after.
            current = self._health.snapshot().get("classifier")
            classifier = self._classifier
            own = (
                f"{classifier.card.name} {classifier.card.version}"
                if classifier is not None
                else "classifier"
            )
            self._classifier_detail = current.detail if current is not None else own
            self._health.report("classifier", Status.DEGRADED, f"{self._classifier_detail}; {state.detail}")
        else:
            self._health.report("classifier", Status.OK, self._classifier_detail)
