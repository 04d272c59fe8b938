"""Camera sources and the Camera runner: replay timing and ground truth, a real MP4 through OpenCV, the
frame watchdog reopening a stalled source, and a missing camera reported without stopping anything."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from recyclex_edge.camera import (
    Camera,
    CameraError,
    DepositTiming,
    Frame,
    FrameSource,
    NoSource,
    OpenCVSource,
    Picamera2Source,
    ReplaySource,
    ScenePhase,
    SourceEndedError,
    build_source,
    find_photos,
    small_grey,
)
from recyclex_edge.config.camera import CameraConfig
from recyclex_edge.health import ComponentHealth, HealthRegistry, Status
from tests.conftest import val_photos
from tests.hardware.conftest import wait_until

SMALL = (160, 120)


def replay(folder: Path, **kwargs: object) -> ReplaySource:
    options: dict[str, object] = {
        "width": 320,
        "height": 240,
        "fps": 10.0,
        "small_size": SMALL,
        "timing": DepositTiming(empty_s=1.0, arrive_s=0.3, dwell_s=2.0, remove_s=0.2),
        "paced": False,
        "loop": False,
        "noise": 2.0,
    }
    options.update(kwargs)
    return ReplaySource(folder, **options)  # type: ignore[arg-type]


def read_all(source: FrameSource) -> list[Frame]:
    frames = []
    with pytest.raises(SourceEndedError):
        while True:
            frame = source.read(timeout_s=1.0)
            assert frame is not None
            frames.append(frame)
    return frames


def test_replay_presents_each_photo_as_a_deposit_with_realistic_timing(photo_folder: Path) -> None:
    source = replay(photo_folder)
    source.open()
    frames = read_all(source)

    runs = [
        (phase, len(list(group)))
        for phase, group in itertools.groupby(f.scene.phase for f in frames if f.scene)
    ]
    expected_item = [
        (ScenePhase.EMPTY, 10),
        (ScenePhase.ARRIVING, 3),
        (ScenePhase.SETTLED, 20),
        (ScenePhase.REMOVING, 2),
    ]
    assert runs == [*expected_item * 3, (ScenePhase.EMPTY, 10)]
    # Ground truth: which photo, and its label from the folder name, in sorted order.
    settled = [f.scene for f in frames if f.scene and f.scene.phase is ScenePhase.SETTLED]
    assert [s.label for s in settled[::20]] == ["cardboard", "glass", "metal"]
    assert [s.item_index for s in settled[::20]] == [0, 1, 2]
    assert all(s.photo is not None and s.photo.parent.name == s.label for s in settled)
    assert source.showing == frames[-1].scene
    # Unpaced timestamps still advance by 1/fps, and sequence numbers by one.
    assert np.allclose(np.diff([f.timestamp_s for f in frames]), 0.1)
    assert [f.sequence for f in frames] == list(range(len(frames)))
    # Frames are what OpenCV would give: BGR uint8 main, small grey for the detector.
    assert frames[0].image.shape == (240, 320, 3) and frames[0].image.dtype == np.uint8
    assert frames[0].small.shape == (120, 160) and frames[0].small.dtype == np.uint8


def test_replay_settled_frame_is_the_photo_and_the_empty_scene_is_static(photo_folder: Path) -> None:
    source = replay(photo_folder)
    source.open()
    frames = read_all(source)
    empty = [f.image for f in frames if f.scene and f.scene.phase is ScenePhase.EMPTY]
    settled = next(f for f in frames if f.scene and f.scene.phase is ScenePhase.SETTLED)
    # Only sensor noise distinguishes two empty frames.
    assert np.abs(empty[0].astype(int) - empty[5].astype(int)).mean() < 4
    assert settled.scene is not None and settled.scene.photo is not None
    photo = cv2.resize(cv2.imread(str(settled.scene.photo)), (320, 240), interpolation=cv2.INTER_AREA)
    assert np.abs(settled.image.astype(int) - photo.astype(int)).mean() < 4


def test_replay_shuffle_is_seeded_and_loop_starts_over(dataset_val: Path) -> None:
    sorted_photos = find_photos(dataset_val)
    assert len(sorted_photos) == len(val_photos())
    assert find_photos(dataset_val, "shuffled", seed=3) == find_photos(dataset_val, "shuffled", seed=3)
    assert find_photos(dataset_val, "shuffled", seed=3) != sorted_photos

    looping = replay(
        dataset_val / "glass",
        loop=True,
        timing=DepositTiming(empty_s=0.1, arrive_s=0.1, dwell_s=0.1, remove_s=0.1),
    )
    looping.open()
    count = len(find_photos(dataset_val / "glass"))
    indexes = {
        frame.scene.item_index for _ in range(count * 4 + 8) if (frame := looping.read(1.0)) and frame.scene
    }
    assert max(indexes) >= count, "the replay should have started over after the last photo"


def test_replay_paced_delivers_at_the_configured_fps(photo_folder: Path) -> None:
    source = replay(photo_folder, paced=True, fps=20.0)
    source.open()
    start = time.monotonic()
    for _ in range(11):
        assert source.read(timeout_s=1.0) is not None
    # Ten frame intervals at 20 fps; only a lower bound, a loaded machine may be late.
    assert time.monotonic() - start >= 0.45


def write_mp4(path: Path, photos: list[Path], frames_per_photo: int, size: tuple[int, int]) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, size)
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for photo in photos:
        image = cv2.resize(cv2.imread(str(photo)), size, interpolation=cv2.INTER_AREA)
        for _ in range(frames_per_photo):
            writer.write(image)
    writer.release()


def test_opencv_source_plays_a_real_mp4_through_the_camera(tmp_path: Path, health: HealthRegistry) -> None:
    photos = [val_photos(label)[0] for label in ("glass", "paper", "plastic")]
    video = tmp_path / "items.mp4"
    write_mp4(video, photos, frames_per_photo=4, size=(320, 240))
    source = OpenCVSource(str(video), width=320, height=240, fps=60.0, small_size=SMALL, loop=True)
    assert source.kind == "file"

    with Camera(source, health, stall_timeout_s=2.0) as camera:
        first = camera.wait_for_frame(timeout_s=5.0)
        assert first is not None
        # More frames than the file holds: the file looped.
        wait_until(lambda: camera.watchdog.frames > 12 * 2, what="the video to loop")
        assert health.snapshot()["camera"].status is Status.OK

    assert first.image.shape == (240, 320, 3) and first.image.dtype == np.uint8
    assert first.small.shape == (120, 160)
    expected = cv2.resize(cv2.imread(str(photos[0])), (320, 240), interpolation=cv2.INTER_AREA)
    # mp4v is lossy; the first frame is still clearly the first photo, not another one.
    assert np.abs(first.image.astype(int) - expected.astype(int)).mean() < 12
    other = cv2.resize(cv2.imread(str(photos[1])), (320, 240), interpolation=cv2.INTER_AREA)
    assert np.abs(first.image.astype(int) - other.astype(int)).mean() > 20


def test_video_file_without_loop_ends_and_is_reported(tmp_path: Path, health: HealthRegistry) -> None:
    video = tmp_path / "short.mp4"
    write_mp4(video, [val_photos("metal")[0]], frames_per_photo=3, size=(160, 120))
    source = OpenCVSource(
        str(video), width=160, height=120, fps=15.0, small_size=SMALL, loop=False, paced=False
    )
    with Camera(source, health, stall_timeout_s=2.0) as camera:
        wait_until(lambda: "ended" in health.snapshot()["camera"].detail, what="the end to be reported")
        assert camera.watchdog.frames == 3
        assert health.snapshot()["camera"].status is Status.FAILING


class StallingSource(FrameSource):
    """Delivers `frames_per_open` frames after each open, then nothing (a frozen camera); its first read
    after the first reopen raises, like a driver hiccup."""

    def __init__(self, frames_per_open: int) -> None:
        super().__init__("stalling test source", SMALL)
        self.frames_per_open = frames_per_open
        self.opens = 0
        self.closes = 0
        self._left = 0
        self._image = np.full((120, 160, 3), 128, np.uint8)
        self._raise_next = False

    def open(self) -> None:
        self.opens += 1
        self._left = self.frames_per_open
        self._raise_next = self.opens == 2

    def read(self, timeout_s: float) -> Frame | None:
        if self._raise_next:
            self._raise_next = False
            raise ValueError("corrupt frame from the driver")
        if self._left == 0:
            time.sleep(min(timeout_s, 0.02))
            return None
        self._left -= 1
        time.sleep(0.005)
        return Frame(self._image, small_grey(self._image, SMALL), time.monotonic(), self._next_sequence())

    def close(self) -> None:
        self.closes += 1


def test_watchdog_reopens_a_stalled_source(health: HealthRegistry) -> None:
    transitions: list[tuple[Status, str]] = []
    health.subscribe(lambda name, state: transitions.append((state.status, state.detail)))
    source = StallingSource(frames_per_open=5)
    with Camera(
        source, health, stall_timeout_s=0.3, reopen_backoff_s=0.05, reopen_backoff_max_s=0.2
    ) as camera:
        wait_until(lambda: source.opens >= 3 and camera.watchdog.frames >= 10, what="two reopens with frames")
        stats = camera.stats()
        # A frame newer than any seen: the camera keeps serving after reopening.
        latest = camera.latest()
        assert latest is not None

    assert stats.stalls >= 1, "the frozen source must count as a stall"
    assert stats.read_errors == 1, "the raising read is counted, not fatal"
    assert stats.reconnects >= 1
    assert source.closes >= source.opens - 1, "every stalled source is closed before it is reopened"
    statuses = [status for status, _ in transitions]
    assert Status.FAILING in statuses
    assert any("no frame for 0.3 s" in detail for _, detail in transitions)
    assert any(status is Status.OK for status in statuses[statuses.index(Status.FAILING) + 1 :]), (
        "after the reopen the camera must be reported ok again"
    )


def test_no_camera_is_reported_failing_and_retried(health: HealthRegistry) -> None:
    camera = Camera(NoSource(), health, stall_timeout_s=1.0, reopen_backoff_s=0.02, reopen_backoff_max_s=0.05)
    camera.start()
    try:
        wait_until(lambda: camera.watchdog.open_failures >= 3, what="repeated open attempts")
        state: ComponentHealth = health.snapshot()["camera"]
        assert state.status is Status.FAILING
        assert "no camera configured" in state.detail
        assert camera.wait_for_frame(timeout_s=0.05) is None
    finally:
        started = time.monotonic()
        camera.close()
    assert time.monotonic() - started < 2.0, "closing must not wait for the backoff"
    assert not any(t.name == "camera-capture" and t.is_alive() for t in threading.enumerate())


def test_picamera2_missing_here_is_a_camera_error_not_a_crash(health: HealthRegistry) -> None:
    source = Picamera2Source(width=640, height=480, fps=15, small_size=SMALL)
    with pytest.raises(CameraError, match="picamera2"):
        source.open()
    with Camera(source, health, reopen_backoff_s=0.02, reopen_backoff_max_s=0.05) as camera:
        wait_until(lambda: camera.watchdog.open_failures >= 1, what="the failed open")
    assert health.snapshot()["camera"].status is Status.FAILING


@pytest.mark.parametrize(
    ("setting", "kind"),
    [
        ("none", NoSource),
        ("picamera2", Picamera2Source),
        ("replay:/srv/photos", ReplaySource),
        ("0", OpenCVSource),
        ("rtsp://cam.local/stream", OpenCVSource),
        ("/var/lib/clip.mp4", OpenCVSource),
    ],
)
def test_build_source_understands_every_camera_source_setting(setting: str, kind: type[FrameSource]) -> None:
    source = build_source(CameraConfig(source=setting))
    assert isinstance(source, kind)
    assert source.small_size == (160, 120)


def test_opencv_source_kinds_and_missing_file() -> None:
    assert OpenCVSource("0", width=64, height=48, fps=15, small_size=SMALL).kind == "device"
    assert OpenCVSource("http://x/mjpg", width=64, height=48, fps=15, small_size=SMALL).kind == "stream"
    missing = OpenCVSource("/nonexistent/clip.mp4", width=64, height=48, fps=15, small_size=SMALL)
    with pytest.raises(CameraError, match="does not exist"):
        missing.open()


class WedgedSource(FrameSource):
    """A driver that hangs inside read() until released, ignoring its timeout."""

    def __init__(self) -> None:
        super().__init__("wedged test source", SMALL)
        self.release = threading.Event()
        self.reading = threading.Event()

    def open(self) -> None:
        """Opens fine."""

    def read(self, timeout_s: float) -> Frame | None:
        self.reading.set()
        self.release.wait()
        return None

    def close(self) -> None:
        self.release.set()


def test_responsive_tells_a_patient_retry_from_a_hung_driver(health: HealthRegistry) -> None:
    retrying = Camera(NoSource(), health, reopen_backoff_s=2.0, reopen_backoff_max_s=2.0)
    with retrying:
        wait_until(lambda: retrying.watchdog.open_failures == 1, what="the first failed open")
        time.sleep(1.0)  # well into the 2 s back-off
        assert retrying.responsive(0.8), "waiting to retry is not a hang"
    assert not retrying.responsive(0.8), "a stopped camera thread is not responsive"

    source = WedgedSource()
    wedged = Camera(source, HealthRegistry())
    with wedged:
        assert source.reading.wait(5.0)
        time.sleep(0.5)
        assert not wedged.responsive(0.3), "a read stuck for longer than the silence allowed is a hang"
        source.release.set()


# The real failures of picamera2's import next to the wrong numpy, as numpy and Cython word them.
NUMPY_ABI_FAILURES = [
    "ValueError('numpy.dtype size changed, may indicate binary incompatibility. "
    "Expected 96 from C header, got 88 from PyObject')",
    "ImportError('numpy.core.multiarray failed to import')",
    "AttributeError('_ARRAY_API not found')",
]


def fake_camera_stack(folder: Path, failure: str) -> None:
    """A `picamera2` package that fails at import the way apt's does when its simplejpeg meets another
    numpy: picamera2 imports simplejpeg, whose import raises `failure`. Tests our error handling."""
    (folder / "simplejpeg.py").write_text(f"raise {failure}\n")
    (folder / "picamera2").mkdir()
    (folder / "picamera2" / "__init__.py").write_text("import simplejpeg\nPicamera2 = None\n")


@pytest.mark.parametrize("failure", NUMPY_ABI_FAILURES)
def test_picamera2_numpy_abi_clash_is_reported_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, health: HealthRegistry, failure: str
) -> None:
    fake_camera_stack(tmp_path, failure)
    monkeypatch.syspath_prepend(str(tmp_path))
    source = Picamera2Source(width=640, height=480, fps=15, small_size=SMALL)
    with pytest.raises(CameraError) as raised:
        source.open()
    message = str(raised.value)
    assert "numpy" in message and "install 'numpy<2'" in message and np.__version__ in message
    assert "not installed" not in message, "an ABI clash must not be reported as a missing package"

    with Camera(source, health, reopen_backoff_s=0.02, reopen_backoff_max_s=0.05) as camera:
        wait_until(lambda: camera.watchdog.open_failures >= 2, what="repeated open attempts")
    state = health.snapshot()["camera"]
    assert state.status is Status.FAILING
    assert "picamera2 #0 cannot be opened" in state.detail and "install 'numpy<2'" in state.detail
    assert sys.prefix not in state.detail, "/health is public: no paths of this machine"


def test_picamera2_without_libcamera_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PyPI's picamera2 in a venv without the system site packages: libcamera is missing.
    fake_camera_stack(tmp_path, "ModuleNotFoundError(\"No module named 'libcamera'\", name='libcamera')")
    monkeypatch.syspath_prepend(str(tmp_path))
    source = Picamera2Source(width=640, height=480, fps=15, small_size=SMALL)
    with pytest.raises(CameraError, match=r"apt install python3-picamera2.*--system-site-packages") as raised:
        source.open()
    assert "numpy" not in str(raised.value)
