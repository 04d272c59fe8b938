from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recyclex_edge.config.base import Section


class ReplayConfig(Section):
    """How `camera.source: replay:<folder>` presents its photos: one deposit per photo, like a real bin."""

    order: Literal["sorted", "shuffled"] = Field(
        "sorted", description="Photo order: by path, or shuffled with `seed` (same seed, same order)."
    )
    seed: int = Field(0, description="Seed of the shuffled order.")
    empty_s: float = Field(1.5, ge=0, le=60, description="Empty scene before each item arrives.")
    arrive_s: float = Field(0.4, gt=0, le=10, description="The item slides into view over this long.")
    dwell_s: float = Field(
        3.0, gt=0, le=600, description="The item lies still this long before it is removed."
    )
    remove_s: float = Field(0.3, gt=0, le=10, description="The item slides out of view over this long.")
    noise: float = Field(
        2.0, ge=0, le=20, description="Sensor noise (standard deviation, grey levels) added to every frame."
    )


class CameraConfig(Section):
    """Where frames come from."""

    source: str = Field(
        "none",
        min_length=1,
        description=(
            "'none'; 'picamera2'; 'replay:<folder of item photos>'; or anything OpenCV opens: "
            "a device index ('0'), a device path, an RTSP/HTTP URL or a video file."
        ),
    )
    width: int = Field(640, ge=64, le=4096, description="Requested frame width in pixels.")
    height: int = Field(480, ge=48, le=4096, description="Requested frame height in pixels.")
    fps: float = Field(15.0, gt=0, le=120, description="Requested frame rate.")
    loop: bool = Field(True, description="Loop a video file or replay folder when it ends.")
    stall_timeout_s: float = Field(
        5.0, gt=0, le=300, description="No fresh frame for this long: close and reopen the source."
    )
    small_width: int = Field(
        160, ge=32, le=640, description="Width of the small grey stream the deposit detector watches."
    )
    small_height: int = Field(
        120, ge=24, le=480, description="Height of the small grey stream the deposit detector watches."
    )
    reopen_backoff_s: float = Field(
        1.0, gt=0, le=60, description="First wait before reopening a failed source; doubles on each failure."
    )
    reopen_backoff_max_s: float = Field(
        30.0, gt=0, le=600, description="Longest wait between reopen attempts; the camera is retried forever."
    )
    replay: ReplayConfig = Field(
        default_factory=ReplayConfig,
        description="Timing of `source: replay:<folder>` (demo, simulation, tests).",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> CameraConfig:
        if self.reopen_backoff_max_s < self.reopen_backoff_s:
            raise ValueError("reopen_backoff_max_s must be at least reopen_backoff_s")
        return self
