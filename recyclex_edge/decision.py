"""Turning what the model saw into a sorting decision: a class it trusts, or `uncertain`.

A rejected item costs little (it goes to the residual bin); a mis-sorted one contaminates a whole
stream. So a class is only accepted when its confidence reaches the model card's recommended threshold,
or a per-class override from the config.

A deposit is judged on a short burst of frames, not one: their probabilities are averaged. Averaging
(rather than a majority vote) keeps the result a probability, which the card's threshold was calibrated
for, and lets one blurred frame lower the confidence without flipping the class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from recyclex_edge.classifier import Classification, Classifier
from recyclex_edge.config import DecisionConfig
from recyclex_edge.errors import ConfigError, ConfigProblem

UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class Verdict:
    """The model's combined opinion about one item."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    frames: int
    # Mean of the frames' embeddings when the model has one (site adaptation and capture use it).
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)


def combine(classifications: Sequence[Classification]) -> Verdict:
    """Mean probabilities over a burst of frames of the same item."""
    if not classifications:
        raise ValueError("a verdict needs at least one classification")
    labels = list(classifications[0].probabilities)
    count = len(classifications)
    mean = {label: sum(c.probabilities[label] for c in classifications) / count for label in labels}
    best = max(mean, key=mean.__getitem__)
    embeddings = [c.embedding for c in classifications if c.embedding is not None]
    embedding = np.mean(embeddings, axis=0) if len(embeddings) == count else None
    return Verdict(best, mean[best], mean, count, embedding)


class ConfidencePolicy:
    """Accept a class when its confidence reaches its threshold; otherwise `UNCERTAIN`."""

    def __init__(
        self, labels: tuple[str, ...], default_threshold: float, class_thresholds: Mapping[str, float]
    ) -> None:
        unknown = sorted(set(class_thresholds) - set(labels))
        if unknown:
            raise ConfigError(
                [
                    ConfigProblem(
                        f"decision.class_thresholds.{name}",
                        f"is not a label of the model; expected one of: {', '.join(labels)}",
                    )
                    for name in unknown
                ]
            )
        self.default_threshold = default_threshold
        self.thresholds = {label: class_thresholds.get(label, default_threshold) for label in labels}

    @classmethod
    def from_card(cls, classifier: Classifier) -> ConfidencePolicy:
        """The model card's own recommendation, as a bin with no decision overrides applies it."""
        return cls(classifier.labels, classifier.card.decision.threshold, {})

    @classmethod
    def for_model(cls, classifier: Classifier, config: DecisionConfig) -> ConfidencePolicy:
        """The config's threshold, or else the model card's recommended one, with per-class overrides."""
        threshold = config.threshold if config.threshold is not None else classifier.card.decision.threshold
        return cls(classifier.labels, threshold, config.class_thresholds)

    def decide(self, label: str, confidence: float) -> str:
        if confidence >= self.thresholds[label]:
            return label
        return UNCERTAIN
