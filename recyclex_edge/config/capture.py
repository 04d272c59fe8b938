"""Field learning: which items the bin keeps for labelling, how it adapts to its site, drift watch."""

from __future__ import annotations

from pydantic import Field

from recyclex_edge.config.base import Section


class AdaptationConfig(Section):
    """The site adaptation fitted on the labelled items (`<state_dir>/captures/adaptation.npz`)."""

    enabled: bool = Field(
        True, description="Fit and use a site adaptation when it beats the base model in cross-validation."
    )
    refit_delay_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Wait this long after the last label change before refitting (labels come in runs).",
    )
    min_labelled: int = Field(
        6, ge=2, le=10_000, description="Labelled items needed before an adaptation is tried at all."
    )
    max_missort_rate: float = Field(
        0.10,
        gt=0,
        lt=1,
        description="Recalibrated threshold: the lowest one whose cross-validated mis-sort rate among "
        "accepted items stays at or below this.",
    )


class DriftConfig(Section):
    """A rolling watch on how sure the model is, against the bin's own commissioning baseline."""

    window_items: int = Field(
        200, ge=10, le=100_000, description="Items in the rolling window (and in the commissioning baseline)."
    )
    max_uncertain_rise: float = Field(
        0.15,
        gt=0,
        le=1,
        description="Drift when the uncertain rate exceeds the baseline's by more than this "
        "(0.15 = 15 points).",
    )
    max_confidence_drop: float = Field(
        0.10,
        gt=0,
        le=1,
        description="Drift when the mean confidence falls below the baseline's by more than this.",
    )


class CaptureConfig(Section):
    """Doubtful items (and a sample of accepted ones) kept under `<state_dir>/captures/` for labelling."""

    enabled: bool = Field(True, description="Keep items for the Review page; off: nothing is written.")
    sample_rate: float = Field(
        0.05, ge=0, le=1, description="Share of accepted items kept too (uncertain items are always kept)."
    )
    max_mib: int = Field(
        512,
        ge=1,
        le=1_048_576,
        description="Photos and rows kept at most, in MiB: unlabelled items go first, oldest first.",
    )
    retention_days: float = Field(
        30.0,
        gt=0,
        le=3650,
        description="Unlabelled (and exported) items older than this are removed; unexported labels stay.",
    )
    jpeg_quality: int = Field(90, ge=50, le=100, description="JPEG quality of the kept photos.")
    adaptation: AdaptationConfig = Field(
        default_factory=AdaptationConfig, description="Learning the site from the labelled items."
    )
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Noticing that the site has changed.")
