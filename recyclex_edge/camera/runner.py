"""The capture thread: owns one FrameSource, keeps the latest frame, reopens the source when it stalls.

The bin must survive a loose cable, a camera that freezes and a stream that drops for an hour, without a
technician and without exiting. So nothing here ever gives up: a source that fails to open or stops
delivering is closed and reopened with exponential backoff, forever, and `/health` says what is going on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from recyclex_edge.camera.source import Frame, FrameSource, SourceEndedError
from recyclex_edge.health import HealthRegistry, Status

log = logging.getLogger(__name__)

COMPONENT = "camera"
_READ_SLICE_S = 0.5  # longest single read, so that stop requests and stalls are noticed promptly


@dataclass(frozen=True)
class CameraStats:
    """Counters for /health and /metrics. `last_frame_age_s` is None before the first frame."""

    frames: int
    stalls: int
    reconnects: int
    open_failures: int
    read_errors: int
    last_frame_age_s: float | None
    open: bool


class FrameWatchdog:
    """Decides when a source is stalled and how long to wait before the next reopen attempt.

    Pure bookkeeping with an injectable clock: the Camera thread tells it what happened, it answers.
    The backoff doubles after every failure (up to `backoff_max_s`) and starts over once frames flow.

    >>> watchdog = FrameWatchdog(stall_timeout_s=5, backoff_s=1, backoff_max_s=30)
    >>> watchdog.opened(); watchdog.is_stalled()
    False
    """

    def __init__(
        self,
        stall_timeout_s: float,
        backoff_s: float,
        backoff_max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_timeout_s = stall_timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        self._next_backoff_s = backoff_s
        self._reference_s = clock()  # last frame, or when the source (re)opened
        self._last_frame_s: float | None = None
        self._failed_before = False
        self.frames = 0
        self.stalls = 0
        self.reconnects = 0
        self.open_failures = 0
        self.read_errors = 0

    def opened(self) -> None:
        """The source opened: it gets a full stall timeout to deliver its first frame."""
        self._reference_s = self._clock()
        if self._failed_before:
            self.reconnects += 1

    def frame_arrived(self) -> None:
        now = self._clock()
        self._reference_s = self._last_frame_s = now
        self.frames += 1
        self._next_backoff_s = self.backoff_s
        self._failed_before = False

    def is_stalled(self) -> bool:
        return self._clock() - self._reference_s > self.stall_timeout_s

    def failed(self, kind: str) -> float:
        """Record a failure ('open', 'read' or 'stall'); returns the seconds to wait before reopening."""
        if kind == "open":
            self.open_failures += 1
        elif kind == "read":
            self.read_errors += 1
        else:
            self.stalls += 1
        self._failed_before = True
        wait_s = self._next_backoff_s
        self._next_backoff_s = min(self._next_backoff_s * 2, self.backoff_max_s)
        return wait_s

    def last_frame_age_s(self) -> float | None:
        return None if self._last_frame_s is None else self._clock() - self._last_frame_s


class Camera:
    """Runs a FrameSource in a named thread and hands out the latest frame (latest wins, nothing queues).

    Reports the `camera` health component: ok while frames flow; failing, with the reason, while the
    source cannot be opened, has stalled or has ended. Consumers either peek (`latest()`) or wait for
    a frame newer than the one they hold (`wait_for_frame()`); slow consumers just skip frames.

    >>> with Camera(ReplaySource(folder, ...), health, stall_timeout_s=5.0) as camera:
    ...     frame = camera.wait_for_frame(timeout_s=2.0)
    """

    def __init__(
        self,
        source: FrameSource,
        health: HealthRegistry,
        *,
        stall_timeout_s: float = 5.0,
        reopen_backoff_s: float = 1.0,
        reopen_backoff_max_s: float = 30.0,
    ) -> None:
        self.source = source
        self._health = health
        self.watchdog = FrameWatchdog(stall_timeout_s, reopen_backoff_s, reopen_backoff_max_s)
        self._stop = threading.Event()
        self._new_frame = threading.Condition()
        self._latest: Frame | None = None
        self._open = False
        self._reported: tuple[Status, str] | None = None
        self._loop_at_s = time.monotonic()
        self._last_failure = ""
        self._thread = threading.Thread(target=self._run, name="camera-capture", daemon=True)

    def start(self) -> None:
        self._report(Status.DEGRADED, f"{self.source.description}: starting, no frame yet")
        self._thread.start()

    def latest(self) -> Frame | None:
        """The newest frame, or None before the first one."""
        with self._new_frame:
            return self._latest

    def wait_for_frame(self, after_sequence: int = -1, timeout_s: float = 1.0) -> Frame | None:
        """The newest frame whose sequence is above `after_sequence`, or None after `timeout_s`."""
        with self._new_frame:
            self._new_frame.wait_for(
                lambda: self._latest is not None and self._latest.sequence > after_sequence, timeout_s
            )
            latest = self._latest
        return latest if latest is not None and latest.sequence > after_sequence else None

    def responsive(self, within_s: float) -> bool:
        """Whether the capture thread is alive and got round its loop within `within_s`.

        A camera that keeps failing is responsive (it is retrying, as it should); one stuck inside a driver
        call is not, and that is what the systemd watchdog must notice.
        """
        return self._thread.is_alive() and time.monotonic() - self._loop_at_s <= within_s

    def stats(self) -> CameraStats:
        w = self.watchdog
        return CameraStats(
            w.frames, w.stalls, w.reconnects, w.open_failures, w.read_errors, w.last_frame_age_s(), self._open
        )

    def close(self) -> None:
        """Stop the thread and release the source for good."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.error("camera thread did not stop within 5 s (a read is blocked); leaving it behind")
                return
        self.source.shutdown()

    def __enter__(self) -> Camera:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _report(self, status: Status, detail: str) -> None:
        # Only transitions reach the registry: reporting per frame would wake its listeners 15 times a second.
        if self._reported != (status, detail):
            self._reported = (status, detail)
            self._health.report(COMPONENT, status, detail)

    def _counts(self) -> str:
        w = self.watchdog
        return f"{w.reconnects} reconnect(s), {w.stalls} stall(s)"

    def _close_source(self) -> None:
        self._open = False
        try:
            self.source.close()
        except Exception:
            log.exception("closing %s failed; reopening anyway", self.source.description)

    def _back_off(self, kind: str, reason: str) -> None:
        wait_s = self.watchdog.failed(kind)
        # A camera missing for a month must not write a warning every 30 s: repeats go to debug.
        level = logging.DEBUG if reason == self._last_failure else logging.WARNING
        self._last_failure = reason
        log.log(level, "camera %s; retrying in %.1f s", reason, wait_s)
        self._report(Status.FAILING, f"{reason}; retrying ({self._counts()})")
        self._pause(wait_s)

    def _pause(self, seconds: float) -> None:
        """Wait until `seconds` pass or stop is requested, still going round: waiting on purpose (a
        back-off, a finished file) must not look like a hang to `responsive()`."""
        deadline_s = time.monotonic() + seconds
        while not self._stop.is_set() and (left_s := deadline_s - time.monotonic()) > 0:
            self._loop_at_s = time.monotonic()
            self._stop.wait(min(left_s, _READ_SLICE_S))

    def _run(self) -> None:
        description = self.source.description
        while not self._stop.is_set():
            self._loop_at_s = time.monotonic()
            if not self._open:
                try:
                    self.source.open()
                except Exception as error:  # CameraError, or a driver error we did not foresee
                    self._back_off("open", f"{description} cannot be opened: {error}")
                    continue
                self._open = True
                self.watchdog.opened()
                log.info("camera %s opened", description)
            self._loop_at_s = time.monotonic()
            try:
                frame = self.source.read(timeout_s=min(_READ_SLICE_S, self.watchdog.stall_timeout_s))
            except SourceEndedError as ended:
                log.warning("camera %s: %s", description, ended)
                self._close_source()
                self._report(Status.FAILING, str(ended))
                self._pause(float("inf"))
                break
            except Exception as error:  # CameraError, or a decoder crash on one bad frame
                self._close_source()
                self._back_off("read", f"{description} failed: {error}")
                continue
            if frame is None:
                if self.watchdog.is_stalled():
                    self._close_source()
                    self._back_off(
                        "stall", f"{description}: no frame for {self.watchdog.stall_timeout_s:g} s"
                    )
                continue
            self.watchdog.frame_arrived()
            self._last_failure = ""
            with self._new_frame:
                self._latest = frame
                self._new_frame.notify_all()
            self._report(Status.OK, f"{description}: frames arriving ({self._counts()})")
        if self._open:
            self._close_source()
