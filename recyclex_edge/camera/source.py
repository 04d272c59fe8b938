"""The one interface every frame source implements, and the frame it hands out.

A source is opened, read and closed by exactly one thread (the `Camera` runner); it never retries on its
own. Failing loudly (`CameraError`) and letting the runner's watchdog decide when to reopen keeps
the backoff and the health reporting in one place for every kind of camera.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import cv2
import numpy as np

from recyclex_edge.errors import RecycleXError


class CameraError(RecycleXError):
    """The source cannot be opened or has stopped working (unplugged, no such device, stream down)."""


class SourceEndedError(RecycleXError):
    """A finite source (a video file or replay folder with `loop` off) has shown everything it has."""


class ScenePhase(StrEnum):
    """What a replayed scene shows; real cameras do not know this, replay does (ground truth)."""

    EMPTY = "empty"
    ARRIVING = "arriving"
    SETTLED = "settled"
    REMOVING = "removing"


@dataclass(frozen=True)
class SceneTruth:
    """Ground truth of a replayed frame: which photo is shown and how far its deposit has got."""

    phase: ScenePhase
    item_index: int  # deposits started so far, minus one; -1 before the first item
    photo: Path | None  # None while the scene is empty
    label: str | None  # the photo's folder name, e.g. 'glass'


@dataclass(frozen=True, eq=False)
class Frame:
    """One capture: the main BGR image for classification and a small grey one for the deposit detector.

    `timestamp_s` is `time.monotonic()` at capture (replay without pacing advances it by 1/fps per frame,
    so detectors see the same timing, only faster). `sequence` only ever increases for a given source,
    across reopens, so a consumer can wait for "a frame newer than the one I have".
    """

    image: np.ndarray
    small: np.ndarray
    timestamp_s: float
    sequence: int
    scene: SceneTruth | None = None


def small_grey(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """BGR frame -> small grey frame of `size` (width, height), as the detector wants it."""
    # Shrinking first makes the colour conversion 16x cheaper; INTER_AREA averages away sensor noise.
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)


class FrameSource(ABC):
    """Where frames come from: `open()`, then `read()` until done, then `close()`.

    >>> with OpenCVSource("0", width=640, height=480, fps=15, small_size=(160, 120)) as source:
    ...     source.open()
    ...     frame = source.read(timeout_s=1.0)
    """

    def __init__(self, description: str, small_size: tuple[int, int]) -> None:
        self.description = description
        self.small_size = small_size
        self._sequence = itertools.count()

    def _next_sequence(self) -> int:
        return next(self._sequence)

    @abstractmethod
    def open(self) -> None:
        """Start delivering frames. Raises CameraError; may be called again after `close()`."""

    @abstractmethod
    def read(self, timeout_s: float) -> Frame | None:
        """The next frame, or None if none arrived within about `timeout_s`.

        Raises CameraError when the source broke, SourceEndedError when a finite source is done.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the device; safe to call twice or on a source that never opened."""

    def shutdown(self) -> None:
        """Release the source for good (daemon exit); most sources have nothing beyond `close()`."""
        self.close()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


class NoSource(FrameSource):
    """`camera.source: none`: there is no camera; opening always fails, so the bin reports it and retries.

    The daemon keeps serving `/health` and the API; classification by upload still works.
    """

    def __init__(self, small_size: tuple[int, int] = (160, 120)) -> None:
        super().__init__("none", small_size)

    def open(self) -> None:
        raise CameraError("no camera configured (camera.source is 'none'); set camera.source to use one")

    def read(self, timeout_s: float) -> Frame | None:
        raise CameraError("no camera configured")

    def close(self) -> None:
        """Nothing to release."""
