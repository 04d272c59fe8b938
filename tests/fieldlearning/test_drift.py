"""Drift: the bin's commissioning baseline, a rolling window against it, `classifier` health amber with
the hint to label items, and the Prometheus gauges that say so."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from recyclex_edge.api.metrics import Metrics
from recyclex_edge.config import DriftConfig, load_config
from recyclex_edge.decision import combine
from recyclex_edge.fieldlearning import FieldLearning
from recyclex_edge.fieldlearning.drift import DriftMonitor
from recyclex_edge.health import HealthRegistry, Status
from recyclex_edge.imaging import decode_image
from tests.conftest import val_photos
from tests.fieldlearning.test_adaptation import SITE

CONFIG = DriftConfig(window_items=20, max_uncertain_rise=0.15, max_confidence_drop=0.10)


def test_the_baseline_is_measured_once_kept_and_tied_to_the_model(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    monitor = DriftMonitor(CONFIG, path, "a" * 64)
    for index in range(19):
        monitor.observe(index % 10 == 0, 0.9)
    assert "measuring the baseline: 19 of 20" in monitor.state().detail and not path.exists()
    monitor.observe(False, 0.9)
    state = monitor.state()
    assert state.baseline_uncertain_rate == 0.1 and abs(state.baseline_confidence - 0.9) < 1e-9
    assert not state.drifting and path.is_file()

    again = DriftMonitor(CONFIG, path, "a" * 64)
    assert again.state().baseline_uncertain_rate == 0.1, "a restart keeps the commissioning baseline"
    other_model = DriftMonitor(CONFIG, path, "b" * 64)
    assert other_model.state().baseline_uncertain_rate is None, "a new model measures its own"


def test_a_rising_uncertain_rate_or_falling_confidence_is_drift(tmp_path: Path) -> None:
    monitor = DriftMonitor(CONFIG, None, "a" * 64)
    for index in range(20):
        monitor.observe(index % 10 == 0, 0.9)
    for _ in range(6):  # 6 of the last 20 uncertain: 35 % against 10 %
        monitor.observe(True, 0.9)
    state = monitor.state()
    assert state.drifting and "label items on the Review page" in state.detail
    for _ in range(20):
        monitor.observe(False, 0.9)
    assert not monitor.state().drifting
    for _ in range(20):
        monitor.observe(False, 0.75)
    assert monitor.state().drifting, "a mean confidence 0.15 lower drifts too"


def test_photos_from_another_site_turn_classifier_health_amber_and_the_gauge_on(
    tmp_path: Path, shipped_classifier
) -> None:
    """Commissioned on TrashNet-like photos, then fed drink containers photographed elsewhere."""
    config = load_config(
        None,
        [f"storage.state_dir={tmp_path}", "capture.drift.window_items=12", "capture.enabled=false"],
        environ={},
    )
    health = HealthRegistry()
    health.report("classifier", Status.OK, "trashnet 1.1.0 on ai-edge-litert")
    site = FieldLearning(config.capture, config.decision, config.storage.state_dir, health=health)
    site.use_classifier(shipped_classifier)
    metrics = Metrics()
    metrics.watch_drift(site.drift_state)

    def feed(photos: list[Path]) -> None:
        for photo in photos:
            judged = site.adapt(combine([shipped_classifier.classify(decode_image(photo.read_bytes()))]))
            decision = judged.policy.decide(judged.verdict.label, judged.verdict.confidence)
            event = {"decision": decision, "confidence": judged.verdict.confidence}
            site.observe(event, [], judged)

    def gauge(name: str) -> float:
        for family in text_string_to_metric_families(metrics.render().decode()):
            if family.name == name:
                return float(family.samples[0].value)
        raise AssertionError(f"no metric {name}")

    feed([p for label in ("glass", "metal", "plastic", "paper") for p in val_photos(label)[:3]])
    state = site.drift_state()
    assert state is not None and state.baseline_uncertain_rate is not None
    assert gauge("recyclex_classifier_drift") == 0 and health.snapshot()["classifier"].status is Status.OK
    feed([p for label in ("glass", "metal", "plastic") for p in sorted((SITE / label).glob("*.jpg"))[:4]])
    state = site.drift_state()
    assert state is not None and state.drifting, state
    classifier = health.snapshot()["classifier"]
    assert classifier.status is Status.DEGRADED and "Review page" in classifier.detail
    assert classifier.detail.startswith("trashnet 1.1.0"), "the model's own detail is kept"
    assert gauge("recyclex_classifier_drift") == 1
    assert (
        0 <= gauge("recyclex_rolling_uncertain_rate") <= 1 and gauge("recyclex_rolling_mean_confidence") > 0
    )
