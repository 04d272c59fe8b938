"""Camera stage: frame sources (Pi camera, OpenCV, replayed photos, none) and the `Camera` runner.

The daemon builds one source from `camera.source` with `build_source()`, hands it to a `Camera`, and
reads frames from the Camera only:

>>> camera = build_camera(config.camera, health)
>>> camera.start(); frame = camera.wait_for_frame(timeout_s=1.0); camera.close()
"""

from __future__ import annotations

from pathlib import Path

from recyclex_edge.camera.opencv import OpenCVSource
from recyclex_edge.camera.picam import Picamera2Source
from recyclex_edge.camera.replay import DepositTiming, ReplaySource, find_photos
from recyclex_edge.camera.runner import Camera, CameraStats, FrameWatchdog
from recyclex_edge.camera.source import (
    CameraError,
    Frame,
    FrameSource,
    NoSource,
    ScenePhase,
    SceneTruth,
    SourceEndedError,
    small_grey,
)
from recyclex_edge.config.camera import CameraConfig
from recyclex_edge.health import HealthRegistry

REPLAY_PREFIX = "replay:"


def build_source(config: CameraConfig, *, paced: bool = True) -> FrameSource:
    """The source `camera.source` names. Nothing is opened yet; the Camera runner does that (and retries).

    `paced=False` makes replay folders and video files deliver frames as fast as they are read (tests).
    """
    small_size = (config.small_width, config.small_height)
    source = config.source.strip()
    if source == "none":
        return NoSource(small_size)
    if source == "picamera2":
        return Picamera2Source(
            width=config.width, height=config.height, fps=config.fps, small_size=small_size
        )
    if source.startswith(REPLAY_PREFIX):
        replay = config.replay
        return ReplaySource(
            Path(source[len(REPLAY_PREFIX) :]),
            width=config.width,
            height=config.height,
            fps=config.fps,
            small_size=small_size,
            timing=DepositTiming(replay.empty_s, replay.arrive_s, replay.dwell_s, replay.remove_s),
            order=replay.order,
            seed=replay.seed,
            loop=config.loop,
            paced=paced,
            noise=replay.noise,
        )
    return OpenCVSource(
        source,
        width=config.width,
        height=config.height,
        fps=config.fps,
        small_size=small_size,
        loop=config.loop,
        paced=paced,
    )


def build_camera(config: CameraConfig, health: HealthRegistry, *, paced: bool = True) -> Camera:
    """A Camera (not started) running the configured source with the configured watchdog timings."""
    return Camera(
        build_source(config, paced=paced),
        health,
        stall_timeout_s=config.stall_timeout_s,
        reopen_backoff_s=config.reopen_backoff_s,
        reopen_backoff_max_s=config.reopen_backoff_max_s,
    )


__all__ = [
    "Camera",
    "CameraError",
    "CameraStats",
    "DepositTiming",
    "Frame",
    "FrameSource",
    "FrameWatchdog",
    "NoSource",
    "OpenCVSource",
    "Picamera2Source",
    "ReplaySource",
    "ScenePhase",
    "SceneTruth",
    "SourceEndedError",
    "build_camera",
    "build_source",
    "find_photos",
    "small_grey",
]
