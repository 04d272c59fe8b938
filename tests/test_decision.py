"""Combining a burst and applying thresholds: trust a class, or send the item to the residual bin."""

from __future__ import annotations

import pytest

from recyclex_edge.classifier import Classification
from recyclex_edge.decision import UNCERTAIN, ConfidencePolicy, combine
from recyclex_edge.errors import ConfigError
from recyclex_edge.ids import new_event_id

LABELS = ("cardboard", "glass", "metal", "paper", "plastic", "trash")


def classification(**probabilities: float) -> Classification:
    full = {label: probabilities.get(label, 0.0) for label in LABELS}
    rest = (1.0 - sum(full.values())) / sum(1 for v in full.values() if v == 0)
    full = {label: p or rest for label, p in full.items()}
    best = max(full, key=full.__getitem__)
    return Classification(best, full[best], full, "m", "1", 0.1, 1.0)


def test_mean_of_a_burst_survives_one_bad_frame() -> None:
    burst = [classification(glass=0.9), classification(glass=0.88), classification(plastic=0.7, glass=0.2)]
    verdict = combine(burst)
    assert verdict.label == "glass"
    assert verdict.frames == 3
    assert verdict.confidence == pytest.approx((0.9 + 0.88 + 0.2) / 3)
    assert sum(verdict.probabilities.values()) == pytest.approx(1.0)


def test_empty_burst_is_a_bug() -> None:
    with pytest.raises(ValueError, match="at least one"):
        combine([])


def test_threshold_and_per_class_overrides() -> None:
    policy = ConfidencePolicy(LABELS, 0.8, {"glass": 0.95})
    assert policy.decide("metal", 0.81) == "metal"
    assert policy.decide("metal", 0.79) == UNCERTAIN
    assert policy.decide("glass", 0.9) == UNCERTAIN, "glass has a stricter override"
    assert policy.decide("glass", 0.95) == "glass"


def test_override_for_a_label_the_model_does_not_have() -> None:
    with pytest.raises(ConfigError, match=r"decision\.class_thresholds\.ewaste"):
        ConfidencePolicy(LABELS, 0.8, {"ewaste": 0.9})


def test_event_ids_are_unique_and_sort_in_creation_order() -> None:
    ids = [new_event_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)
