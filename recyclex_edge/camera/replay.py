"""Replay of item photos as deposits: the demo, the simulation, and how tests drive the whole pipeline.

Each photo becomes one deposit over a static background, with the timing of a real one: the scene is
empty, the item slides in over a few frames, lies still, slides out, and the scene is empty again. Once
settled the photo fills the frame, so the classifier sees exactly the photo and the photo's folder name
is a fair ground truth. Every frame says which photo it shows (`Frame.scene`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from recyclex_edge.camera.source import (
    CameraError,
    Frame,
    FrameSource,
    ScenePhase,
    SceneTruth,
    SourceEndedError,
    small_grey,
)

log = logging.getLogger(__name__)

_PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}
_NOISE_FRAMES = 4  # distinct noise patterns cycled through, so neighbouring frames never match


@dataclass(frozen=True)
class DepositTiming:
    """Seconds each phase of a replayed deposit lasts."""

    empty_s: float = 1.5
    arrive_s: float = 0.4
    dwell_s: float = 3.0
    remove_s: float = 0.3


def find_photos(folder: Path, order: str = "sorted", seed: int = 0) -> list[Path]:
    """Item photos under `folder` (recursively), by path or in a seeded shuffle."""
    photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _PHOTO_SUFFIXES and p.is_file())
    if order == "shuffled":
        random.Random(seed).shuffle(photos)
    return photos


def _background(width: int, height: int) -> np.ndarray:
    """A static tray: a soft grey gradient with a little low-frequency texture, the same every run."""
    rng = np.random.default_rng(12345)
    texture = cv2.resize(rng.normal(0, 6, (height // 16, width // 16)).astype(np.float32), (width, height))
    gradient = np.linspace(95, 120, width, dtype=np.float32)[np.newaxis, :]
    grey = np.clip(gradient + texture, 0, 255).astype(np.uint8)
    tray: np.ndarray = cv2.merge([grey, grey, np.clip(grey.astype(np.int16) + 6, 0, 255).astype(np.uint8)])
    return tray


class ReplaySource(FrameSource):
    """Photos from a folder presented as deposits at `fps`.

    `paced=False` delivers frames as fast as they are read, with timestamps still 1/fps apart, for tests.
    With `loop` the photos start over when all have been shown; without it the source ends.

    >>> source = ReplaySource(Path("trashnet/val"), width=640, height=480, fps=15, small_size=(160, 120))
    >>> source.open(); frame = source.read(timeout_s=1.0); frame.scene.label
    """

    def __init__(
        self,
        folder: Path,
        *,
        width: int,
        height: int,
        fps: float,
        small_size: tuple[int, int],
        timing: DepositTiming | None = None,
        order: str = "sorted",
        seed: int = 0,
        loop: bool = True,
        paced: bool = True,
        noise: float = 2.0,
    ) -> None:
        super().__init__(f"replay {folder}", small_size)
        self.folder = folder
        self.width, self.height, self.fps = width, height, fps
        self.timing = timing or DepositTiming()
        self.order, self.seed = order, seed
        self.loop, self.paced = loop, paced
        self._background = _background(width, height)
        self._noise = self._noise_bank(noise, seed)
        self._script: Iterator[tuple[np.ndarray, SceneTruth]] | None = None
        self._frames_shown = 0
        self._clock_start_s = 0.0
        self._last_truth: SceneTruth | None = None

    def _noise_bank(self, noise: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Sensor noise as pairs of saturating uint8 offsets (add one, subtract the other): two cheap cv2
        calls per frame instead of a float pass over every pixel."""
        if noise <= 0:
            return []
        rng = np.random.default_rng(seed)
        bank = []
        for _ in range(_NOISE_FRAMES):
            values = rng.normal(0, noise, (self.height, self.width, 3)).round()
            bank.append((np.clip(values, 0, 255).astype(np.uint8), np.clip(-values, 0, 255).astype(np.uint8)))
        return bank

    @property
    def showing(self) -> SceneTruth | None:
        """Ground truth of the latest frame read (None before the first)."""
        return self._last_truth

    def open(self) -> None:
        if not self.folder.is_dir():
            raise CameraError(f"replay folder {self.folder} does not exist")
        photos = find_photos(self.folder, self.order, self.seed)
        if not photos:
            raise CameraError(f"replay folder {self.folder} holds no .jpg/.jpeg/.png photos")
        self._script = self._scenes(photos)
        self._frames_shown = 0
        self._clock_start_s = time.monotonic()

    def _frames(self, seconds: float) -> int:
        return max(1, round(seconds * self.fps))

    def _scenes(self, photos: list[Path]) -> Iterator[tuple[np.ndarray, SceneTruth]]:
        timing = self.timing
        index = -1
        while True:
            for photo in photos:
                empty = SceneTruth(ScenePhase.EMPTY, index, None, None)
                for _ in range(self._frames(timing.empty_s)):
                    yield self._background, empty
                index += 1
                item = self._load(photo)
                label = photo.parent.name if photo.parent != self.folder else None
                arriving = SceneTruth(ScenePhase.ARRIVING, index, photo, label)
                steps = self._frames(timing.arrive_s)
                for step in range(1, steps + 1):
                    yield self._slid(item, dy=round(self.height * (step - steps) / steps)), arriving
                settled = SceneTruth(ScenePhase.SETTLED, index, photo, label)
                for _ in range(self._frames(timing.dwell_s)):
                    yield item, settled
                removing = SceneTruth(ScenePhase.REMOVING, index, photo, label)
                steps = self._frames(timing.remove_s)
                for step in range(1, steps + 1):
                    yield self._slid(item, dx=round(self.width * step / (steps + 1))), removing
            if not self.loop:
                # The last item leaves an empty scene behind, as every other item does.
                empty = SceneTruth(ScenePhase.EMPTY, index, None, None)
                for _ in range(self._frames(timing.empty_s)):
                    yield self._background, empty
                return
            log.info("replay of %d photos from %s starts over", len(photos), self.folder)

    def _load(self, photo: Path) -> np.ndarray:
        image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("replay photo %s cannot be decoded; showing the empty tray instead", photo)
            return self._background
        return cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)

    def _slid(self, item: np.ndarray, dx: int = 0, dy: int = 0) -> np.ndarray:
        """The item shifted by (dx, dy) over the background: falling in from the top, pushed out sideways."""
        scene = self._background.copy()
        height, width = self.height, self.width
        src_y, dst_y = max(0, -dy), max(0, dy)
        src_x, dst_x = max(0, -dx), max(0, dx)
        rows, cols = height - abs(dy), width - abs(dx)
        if rows > 0 and cols > 0:
            scene[dst_y : dst_y + rows, dst_x : dst_x + cols] = item[
                src_y : src_y + rows, src_x : src_x + cols
            ]
        return scene

    def read(self, timeout_s: float) -> Frame | None:
        if self._script is None:
            raise CameraError(f"{self.description} is not open")
        scene_time_s = self._clock_start_s + self._frames_shown / self.fps
        if self.paced:
            wait_s = scene_time_s - time.monotonic()
            if wait_s > timeout_s:
                time.sleep(timeout_s)
                return None
            if wait_s > 0:
                time.sleep(wait_s)
            elif wait_s < -1.0:
                # Far behind (the machine was suspended or overloaded): restart the clock, don't burst.
                self._clock_start_s = time.monotonic() - self._frames_shown / self.fps
        try:
            image, truth = next(self._script)
        except StopIteration:
            raise SourceEndedError(f"replay of {self.folder} is done (camera.loop is off)") from None
        timestamp_s = time.monotonic() if self.paced else scene_time_s
        if self._noise:
            plus, minus = self._noise[self._frames_shown % len(self._noise)]
            image = cv2.subtract(cv2.add(image, plus), minus)
        else:
            image = image.copy()
        self._frames_shown += 1
        self._last_truth = truth
        return Frame(image, small_grey(image, self.small_size), timestamp_s, self._next_sequence(), truth)

    def close(self) -> None:
        self._script = None
