"""Deposit-detector cost: CPU share of one core at 15 fps on the small stream (target: at most 10%).

Frames are real TrashNet val photos replayed as deposits (the same ReplaySource the demo uses), rendered
once up front so only the detector is timed. Three costs are reported, each as CPU seconds (all threads of
this process, `time.process_time`) per frame and as a share of one core at the stream's frame rate:

- `detector`: our SceneWatcher (blur, background difference, frame difference, running average);
- `mog2`: OpenCV's MOG2 background subtractor on the same frames, the alternative we did not pick;
- `small_stream`: making the small grey frame from a 640x480 BGR frame (camera side; picamera2's lores
  stream does this in hardware).

A second phase runs the real thing in real time: Camera (paced replay) -> VisionDepositDetector threads
for `--seconds`, and reports the process's CPU share and the deposit events seen.

    .venv/bin/python tools/bench/detector.py --photos ../shared/datasets/trashnet/val --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from recyclex_edge.camera import Camera, DepositTiming, ReplaySource, small_grey
from recyclex_edge.config.detector import VisionDetectorConfig
from recyclex_edge.detector import DepositEventKind, SceneWatcher, VisionDepositDetector
from recyclex_edge.health import HealthRegistry

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
DEFAULT_PHOTOS = REPO.parent / "shared" / "datasets" / "trashnet" / "val"
TARGET_SHARE = 0.10


def render(photos: Path, frames: int, fps: float) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    source = ReplaySource(
        photos,
        width=640,
        height=480,
        fps=fps,
        small_size=(160, 120),
        order="shuffled",
        paced=False,
        loop=True,
    )
    source.open()
    images, smalls, stamps = [], [], []
    for _ in range(frames):
        frame = source.read(timeout_s=1.0)
        assert frame is not None
        images.append(frame.image)
        smalls.append(frame.small)
        stamps.append(frame.timestamp_s)
    return images, smalls, stamps


def cpu_per_frame_s(items: Sequence[T], step: Callable[[T], object]) -> float:
    """CPU seconds (every thread of this process) per call of `step`."""
    start = time.process_time()
    for item in items:
        step(item)
    return (time.process_time() - start) / len(items)


def offline(photos: Path, frames: int, fps: float) -> dict[str, Any]:
    images, smalls, stamps = render(photos, frames, fps)
    watcher = SceneWatcher(VisionDetectorConfig())
    events: list[str] = []

    def detect(index: int) -> None:
        event = watcher.update(smalls[index], stamps[index], index)
        if event is not None:
            events.append(event.kind.value)

    mog2 = cv2.createBackgroundSubtractorMOG2(history=300, detectShadows=False)
    detector_s = cpu_per_frame_s(range(frames), detect)
    mog2_s = cpu_per_frame_s(smalls, mog2.apply)
    convert_s = cpu_per_frame_s(images, lambda image: small_grey(image, (160, 120)))

    def costs(seconds: float) -> dict[str, float]:
        return {"cpu_ms_per_frame": round(seconds * 1000, 4), "share_of_one_core": round(seconds * fps, 5)}

    return {
        "frames": frames,
        "detector": costs(detector_s),
        "mog2": costs(mog2_s),
        "small_stream": costs(convert_s),
        "settled_events": events.count(DepositEventKind.SETTLED.value),
    }


def realtime(photos: Path, seconds: float, fps: float) -> dict[str, Any]:
    health = HealthRegistry()
    source = ReplaySource(
        photos,
        width=640,
        height=480,
        fps=fps,
        small_size=(160, 120),
        timing=DepositTiming(empty_s=1.0, arrive_s=0.4, dwell_s=2.0, remove_s=0.3),
        order="shuffled",
    )
    kinds: list[str] = []
    with (
        Camera(source, health, stall_timeout_s=5.0) as camera,
        VisionDepositDetector(camera, VisionDetectorConfig()) as detector,
    ):
        camera.wait_for_frame(timeout_s=5.0)
        start_wall, start_cpu = time.monotonic(), time.process_time()
        frames_before = camera.watchdog.frames
        while (left := seconds - (time.monotonic() - start_wall)) > 0:
            event = detector.next_event(timeout_s=min(left, 0.5))
            if event is not None:
                kinds.append(event.kind.value)
        wall, cpu = time.monotonic() - start_wall, time.process_time() - start_cpu
        frames = camera.watchdog.frames - frames_before
    return {
        "seconds": round(wall, 2),
        "frames": frames,
        "measured_fps": round(frames / wall, 2),
        "process_share_of_one_core": round(cpu / wall, 4),
        "note": "whole process: replay rendering 640x480 + noise, small stream, detector, threads",
        "events": {kind: kinds.count(kind) for kind in sorted(set(kinds))},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of item photos")
    parser.add_argument("--frames", type=int, default=900, help="frames for the offline timing")
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="real-time run; 0 skips it")
    args = parser.parse_args()
    if not args.photos.is_dir():
        print(f"photo folder {args.photos} not found; pass --photos", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)  # what the daemon's small-frame work gets on a busy Pi: one core, no fan-out
    offline_costs = offline(args.photos, args.frames, args.fps)
    result: dict[str, Any] = {
        "benchmark": "deposit detector",
        "fps": args.fps,
        "small_size": [160, 120],
        "target_share_of_one_core": TARGET_SHARE,
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "offline": offline_costs,
    }
    if args.seconds > 0:
        result["realtime"] = realtime(args.photos, args.seconds, args.fps)
    result["within_target"] = offline_costs["detector"]["share_of_one_core"] <= TARGET_SHARE
    print(json.dumps(result, indent=2))
    return 0 if result["within_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
