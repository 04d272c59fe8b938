"""Drift: a rolling uncertain rate and mean confidence against the bin's commissioning baseline.

The first `window_items` items the bin judges (with the model it runs now) are its baseline, kept in
`<state_dir>/captures/baseline.json` so a restart does not forget it; a new model starts a new baseline.
After that, the last `window_items` items are compared with it: an uncertain rate higher by more than
`max_uncertain_rise`, or a mean confidence lower by more than `max_confidence_drop`, is drift (the
light, the floor or what people throw in has changed), and the hint is to label items on the Review page.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from recyclex_edge.config import DriftConfig

log = logging.getLogger("recyclex_edge.fieldlearning.drift")


@dataclass(frozen=True)
class DriftState:
    items: int  # in the current window
    uncertain_rate: float | None
    mean_confidence: float | None
    baseline_uncertain_rate: float | None
    baseline_confidence: float | None
    drifting: bool
    detail: str


class DriftMonitor:
    """Thread-safe: the pipeline thread observes, the API and housekeeping read."""

    def __init__(self, config: DriftConfig, baseline_path: Path | None, model_sha256: str) -> None:
        self._config = config
        self._path = baseline_path
        self._model = model_sha256
        self._lock = threading.Lock()
        self._window: deque[tuple[bool, float]] = deque(maxlen=config.window_items)
        self._baseline: tuple[float, float] | None = self._load()

    def _load(self) -> tuple[float, float] | None:
        if self._path is None or not self._path.is_file():
            return None
        try:
            stored = json.loads(self._path.read_text())
        except (OSError, ValueError) as error:
            log.warning("drift baseline %s unreadable (%s); a new one is measured", self._path, error)
            return None
        if stored.get("model_sha256") != self._model:
            log.info("drift baseline belongs to another model; a new one is measured")
            return None
        return float(stored["uncertain_rate"]), float(stored["mean_confidence"])

    def _save(self, baseline: tuple[float, float]) -> None:
        if self._path is None:
            return
        try:
            self._path.write_text(
                json.dumps(
                    {
                        "model_sha256": self._model,
                        "uncertain_rate": baseline[0],
                        "mean_confidence": baseline[1],
                    }
                )
            )
        except OSError as error:
            log.warning("drift baseline could not be saved (%s); it is kept in memory", error)

    def observe(self, uncertain: bool, confidence: float) -> None:
        with self._lock:
            self._window.append((uncertain, confidence))
            if self._baseline is None and len(self._window) == self._config.window_items:
                self._baseline = self._rates()
                log.info(
                    "drift baseline measured on %d items: %.1f %% uncertain, mean confidence %.3f",
                    len(self._window),
                    self._baseline[0] * 100,
                    self._baseline[1],
                )
                self._save(self._baseline)

    def _rates(self) -> tuple[float, float]:
        count = len(self._window)
        return (
            sum(u for u, _ in self._window) / count,
            sum(c for _, c in self._window) / count,
        )

    def state(self) -> DriftState:
        with self._lock:
            count = len(self._window)
            baseline = self._baseline
            rates = self._rates() if count else None
        if rates is None:
            base_rate, base_confidence = baseline if baseline is not None else (None, None)
            return DriftState(0, None, None, base_rate, base_confidence, False, "no items yet")
        if baseline is None:
            detail = f"measuring the baseline: {count} of {self._config.window_items} items"
            return DriftState(count, *rates, None, None, False, detail)
        full = count >= self._config.window_items
        rise = rates[0] - baseline[0]
        drop = baseline[1] - rates[1]
        drifting = full and (
            rise > self._config.max_uncertain_rise or drop > self._config.max_confidence_drop
        )
        detail = (
            f"last {count} items: {rates[0]:.0%} uncertain (baseline {baseline[0]:.0%}), "
            f"mean confidence {rates[1]:.2f} (baseline {baseline[1]:.2f})"
        ).replace("%", " %")
        if drifting:
            detail = f"drift: {detail}; label items on the Review page so the bin adapts to its site"
        return DriftState(count, *rates, *baseline, drifting, detail)
