"""What the registry counts about models, and the verdicts it draws: pure bookkeeping, no I/O.

- `Counts`: items and `uncertain` decisions per version on this bin (the baseline of the next watch);
- `Watch`: a newly activated model's record during its watch, and whether it must be rolled back;
- `ShadowTally`: a shadow candidate beside the active model: agreement, uncertain rates, accuracy on
  items labelled later, and whether it may be promoted automatically.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from recyclex_edge.config.model import ModelPromoteConfig, ModelWatchConfig

UNCERTAIN = "uncertain"
LABELS_AWAITED = 5000  # recent shadow-judged items a label may still arrive for


def iso_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _share(count: int, total: int) -> float | None:
    return round(count / total, 4) if total else None


@dataclass
class Counts:
    items: int = 0
    uncertain: int = 0


@dataclass
class Watch:
    """Kept in `models/watch.json` so that it survives the daemon restarting (or crashing)."""

    version: str
    card_version: str  # what its events carry as model.version
    predecessor: str
    started_at: float  # wall clock, seconds
    baseline_uncertain: float
    crashes: int = 0  # runs that ended without a clean stop while this watch was on
    running: bool = True  # cleared by a clean stop; still set at start: the last run crashed
    items: int = 0
    uncertain: int = 0
    errors_at_start: int = 0

    def record(self, event: Mapping[str, Any]) -> None:
        """Count an item judged by the watched model (one in flight at the switch was judged by the
        predecessor and does not count)."""
        model = event.get("model")
        if isinstance(model, Mapping) and model.get("version") == self.card_version:
            self.items += 1
            self.uncertain += event.get("decision") == UNCERTAIN

    def verdict(self, settings: ModelWatchConfig, errors: int, stalled: bool) -> str | None:
        """Why the model must go (`errors`: failed classifications since the watch began), or None."""
        if errors >= settings.max_errors:
            return f"{errors} classification(s) failed during its watch"
        if stalled:
            return "the sorting pipeline stalled during its watch"
        if self.items >= settings.min_items:
            rate = self.uncertain / self.items
            baseline = self.baseline_uncertain
            limit = max(baseline * settings.uncertain_ratio, baseline + settings.uncertain_margin)
            if rate > limit:
                return (
                    f"it said uncertain on {rate:.0%} of {self.items} items; its predecessor's rate on this "
                    f"bin was {baseline:.0%} (limit {limit:.0%})"
                )
        return None

    def summary(self, period_s: float) -> dict[str, Any]:
        return {
            "version": self.version,
            "predecessor": self.predecessor,
            "until": iso_time(self.started_at + period_s),
            "items": self.items,
            "uncertain_rate": _share(self.uncertain, self.items),
            "baseline_uncertain_rate": round(self.baseline_uncertain, 4),
        }


@dataclass
class ShadowTally:
    version: str
    items: int = 0
    agreed: int = 0
    active_uncertain: int = 0
    shadow_uncertain: int = 0
    # Both decisions of the most recent items by event id, for labels that come later.
    decisions: OrderedDict[str, tuple[str, str]] = field(default_factory=OrderedDict)
    labelled: int = 0
    active_correct: int = 0
    shadow_correct: int = 0

    def record(self, event: Mapping[str, Any]) -> None:
        shadow = event.get("shadow")
        if not isinstance(shadow, Mapping):
            return
        active, candidate = str(event.get("decision")), str(shadow.get("decision"))
        self.items += 1
        self.agreed += active == candidate
        self.active_uncertain += active == UNCERTAIN
        self.shadow_uncertain += candidate == UNCERTAIN
        self.decisions[str(event.get("id"))] = (active, candidate)
        while len(self.decisions) > LABELS_AWAITED:
            self.decisions.popitem(last=False)

    def label(self, event_id: str, label: str) -> bool:
        decided = self.decisions.pop(event_id, None)
        if decided is None:
            return False
        self.labelled += 1
        self.active_correct += decided[0] == label
        self.shadow_correct += decided[1] == label
        return True

    def promotion_due(self, settings: ModelPromoteConfig) -> bool:
        if settings.mode != "auto" or self.items < settings.min_items:
            return False
        agreement = self.agreed / self.items
        increase = (self.shadow_uncertain - self.active_uncertain) / self.items
        return agreement >= settings.min_agreement and increase <= settings.max_uncertain_increase

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "items": self.items,
            "agreement": _share(self.agreed, self.items),
            "active_uncertain_rate": _share(self.active_uncertain, self.items),
            "shadow_uncertain_rate": _share(self.shadow_uncertain, self.items),
            "labelled": self.labelled,
            "active_accuracy": _share(self.active_correct, self.labelled),
            "shadow_accuracy": _share(self.shadow_correct, self.labelled),
        }
