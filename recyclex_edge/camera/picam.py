"""The Raspberry Pi camera through picamera2. A thin adapter: it cannot be tested here.

picamera2 only exists on Raspberry Pi OS (apt's python3-picamera2, seen through the venv's system site
packages), so it is imported when the source is opened, never at import time. An import that fails
because the apt camera stack was built for another numpy is reported with the fix (see `numpy_abi`),
and the Camera runner shows it in /health while it retries.

The Picamera2 object is created once and kept for the life of the source: creating it again after a
failure leaks the camera and its buffers. Every frame is copied out inside `captured_request()`, whose
exit releases the request, because a request that is never released holds a DMA buffer for good and the
camera stops after a handful of them.

Two streams: `main` (BGR, full size) for classification and `lores` (YUV420 at the detector's size) whose
Y plane is the small grey frame the deposit detector watches, at no conversion cost.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from recyclex_edge.camera.source import CameraError, Frame, FrameSource
from recyclex_edge.numpy_abi import abi_clash_message, is_numpy_abi_error

log = logging.getLogger(__name__)


def _import_picamera2() -> Any:
    """The Picamera2 class, or a CameraError that says what to install or which numpy to pin."""
    try:
        from picamera2 import Picamera2
    except Exception as error:  # an ABI clash is a ValueError, an AttributeError or an ImportError
        if is_numpy_abi_error(error):
            raise CameraError(abi_clash_message("the apt camera stack (picamera2)", error)) from None
        if isinstance(error, ImportError):
            raise CameraError(
                f"picamera2 is not installed ({error}); on Raspberry Pi OS: sudo apt install "
                "python3-picamera2, in a venv with --system-site-packages (tools/install-service does both)"
            ) from None
        raise CameraError(f"picamera2 cannot be imported: {type(error).__name__}: {error}") from None
    return Picamera2


class Picamera2Source(FrameSource):
    """Frames from the Pi camera (libcamera) with a small `lores` stream for the detector.

    >>> source = Picamera2Source(width=640, height=480, fps=15, small_size=(160, 120))
    >>> source.open(); frame = source.read(timeout_s=1.0); source.close()
    """

    def __init__(
        self, *, width: int, height: int, fps: float, small_size: tuple[int, int], camera_num: int = 0
    ) -> None:
        super().__init__(f"picamera2 #{camera_num}", small_size)
        self.width, self.height, self.fps = width, height, fps
        self.camera_num = camera_num
        self._camera: Any = None
        self._started = False

    def open(self) -> None:
        if self._camera is None:
            picamera2_class = _import_picamera2()
            try:
                camera = picamera2_class(self.camera_num)
                frame_us = int(1_000_000 / self.fps)
                config = camera.create_video_configuration(
                    # "RGB888" is libcamera's name for B, G, R byte order: what OpenCV calls BGR.
                    main={"size": (self.width, self.height), "format": "RGB888"},
                    lores={"size": self.small_size, "format": "YUV420"},
                    controls={"FrameDurationLimits": (frame_us, frame_us)},
                    buffer_count=4,
                )
                camera.configure(config)
            except Exception as error:  # libcamera raises RuntimeError, IndexError (no camera), OSError
                raise CameraError(f"the Pi camera cannot be opened: {error}") from None
            self._camera = camera
        try:
            self._camera.start()
        except Exception as error:
            raise CameraError(f"the Pi camera cannot start: {error}") from None
        self._started = True

    def read(self, timeout_s: float) -> Frame | None:
        if not self._started:
            raise CameraError("the Pi camera is not started")
        try:
            with self._camera.captured_request(wait=timeout_s) as request:
                timestamp_s = time.monotonic()
                image = np.ascontiguousarray(request.make_array("main")[:, :, :3])
                lores = request.make_array("lores")
        except TimeoutError:
            return None
        except Exception as error:
            raise CameraError(f"the Pi camera failed while capturing: {error}") from None
        small = np.ascontiguousarray(lores[: self.small_size[1], : self.small_size[0]])
        return Frame(image, small, timestamp_s, self._next_sequence())

    def close(self) -> None:
        # Stopped, not closed: the Picamera2 object is kept so that reopening reuses it.
        if self._camera is not None and self._started:
            try:
                self._camera.stop()
            except Exception as error:
                log.warning("stopping the Pi camera failed: %s", error)
        self._started = False

    def shutdown(self) -> None:
        """Release the camera for good (daemon exit)."""
        self.close()
        if self._camera is not None:
            self._camera.close()
            self._camera = None
