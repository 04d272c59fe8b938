"""Anything OpenCV opens: a V4L2/USB device, an RTSP/HTTP stream, or a video file (optionally looping)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from recyclex_edge.camera.source import CameraError, Frame, FrameSource, SourceEndedError, small_grey
from recyclex_edge.errors import ImageDecodeError
from recyclex_edge.preprocess import as_bgr

log = logging.getLogger(__name__)

_NETWORK_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")


def _kind(target: str) -> str:
    if target.isdigit() or target.startswith("/dev/"):
        return "device"
    if target.lower().startswith(_NETWORK_SCHEMES):
        return "stream"
    return "file"


class OpenCVSource(FrameSource):
    """Frames from `cv2.VideoCapture`.

    `target` is a device index ('0'), a device path ('/dev/video0'), a URL (rtsp://, http://) or a video
    file. A file plays at `fps` (as a camera would deliver it) unless `paced` is False, and starts over at
    its end when `loop` is set; otherwise reading past the end raises SourceEndedError. Network streams get
    OpenCV's open/read timeouts so that a dead stream returns instead of blocking the capture thread.

    >>> source = OpenCVSource("rtsp://cam.local/stream", width=640, height=480, fps=15, small_size=(160, 120))
    >>> source.open(); frame = source.read(timeout_s=1.0); source.close()
    """

    def __init__(
        self,
        target: str,
        *,
        width: int,
        height: int,
        fps: float,
        small_size: tuple[int, int],
        loop: bool = True,
        paced: bool = True,
    ) -> None:
        self.kind = _kind(target)
        super().__init__(f"opencv {self.kind} {target}", small_size)
        self.target = target
        self.width, self.height, self.fps = width, height, fps
        self.loop = loop
        self.paced = paced and self.kind == "file"
        self._capture: Any = None
        self._next_due_s = 0.0

    def open(self) -> None:
        if self.kind == "file" and not Path(self.target).is_file():
            raise CameraError(f"video file {self.target} does not exist")
        timeout_ms = 5000
        if self.kind == "device":
            index_or_path: int | str = int(self.target) if self.target.isdigit() else self.target
            capture = cv2.VideoCapture(index_or_path)
        elif self.kind == "stream":
            capture = cv2.VideoCapture(
                self.target,
                cv2.CAP_FFMPEG,
                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms],
            )
        else:
            capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            capture.release()
            raise CameraError(f"OpenCV cannot open {self.kind} {self.target}")
        if self.kind == "device":
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            capture.set(cv2.CAP_PROP_FPS, self.fps)
            # A short driver queue keeps frames fresh: an old buffered frame would show a scene long gone.
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 2)
        self._capture = capture
        self._next_due_s = time.monotonic()

    def _grab(self) -> np.ndarray:
        ok, image = self._capture.read()
        if ok and image is not None:
            return np.asarray(image)
        if self.kind != "file":
            raise CameraError(f"reading from {self.target} failed (unplugged or stream down)")
        if not self.loop:
            raise SourceEndedError(f"video file {self.target} ended (camera.loop is off)")
        log.debug("video file %s starts over", self.target)
        self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        ok, image = self._capture.read()
        if not ok or image is None:
            raise CameraError(f"video file {self.target} cannot be read from its start")
        return np.asarray(image)

    def read(self, timeout_s: float) -> Frame | None:
        if self._capture is None:
            raise CameraError(f"{self.description} is not open")
        if self.paced:
            wait_s = self._next_due_s - time.monotonic()
            if wait_s > timeout_s:
                time.sleep(timeout_s)
                return None
            if wait_s > 0:
                time.sleep(wait_s)
            # Falling behind (a loaded machine) restarts the schedule rather than bursting to catch up.
            self._next_due_s = max(self._next_due_s + 1.0 / self.fps, time.monotonic())
        image = self._grab()
        timestamp_s = time.monotonic()
        try:
            image = as_bgr(image)
        except ImageDecodeError as error:
            raise CameraError(f"{self.target} delivers frames we cannot use: {error}") from None
        return Frame(image, small_grey(image, self.small_size), timestamp_s, self._next_sequence())

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
