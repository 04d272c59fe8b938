"""POST /predict/video with real MP4s made from real photos: sampling, summary, limits, temp files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from recyclex_edge.api import build_app
from recyclex_edge.api.keys import CONFIG
from recyclex_edge.health import HealthRegistry
from tests.conftest import API_AUTH, val_photos

NATIVE_FPS = 10
ERROR_KEYS = {"error", "code", "timestamp"}


def write_mp4(path: Path, labels: list[str], seconds_each: float) -> Path:
    """An MP4 showing one real photo per label for `seconds_each` seconds, at 10 fps."""
    frames = [cv2.imread(str(val_photos(label)[0])) for label in labels]
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), NATIVE_FPS, (width, height))
    assert writer.isOpened(), "this OpenCV build cannot write MP4"
    for frame in frames:
        for _ in range(round(seconds_each * NATIVE_FPS)):
            writer.write(cv2.resize(frame, (width, height)))
    writer.release()
    return path


@pytest.fixture(scope="module")
def video_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("video") / "items.mp4", ["glass", "metal", "metal"], 1.0)


def upload(data: bytes) -> FormData:
    form = FormData()
    form.add_field("file", data, filename="clip.mp4", content_type="video/mp4")
    return form


def uploads_left(client: TestClient[Any, Any]) -> list[Path]:
    return list((client.app[CONFIG].storage.state_dir / "uploads").iterdir())


async def test_a_video_is_sampled_at_2_fps_and_summarised(
    api_client, shipped_classifier, video_path, openapi_validator
) -> None:
    client = await api_client()
    response = await client.post("/predict/video", data=upload(video_path.read_bytes()), headers=API_AUTH)
    body = await response.json()
    assert response.status == 200, body
    openapi_validator("/predict/video", "POST", 200, body)
    assert body["fps"] == 2.0
    assert [frame["t_s"] for frame in body["frames"]] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]

    # The same frames, decoded independently and classified directly, give the same answers.
    capture = cv2.VideoCapture(str(video_path))
    decoded = []
    while (frame := capture.read())[0]:
        decoded.append(frame[1])
    capture.release()
    expected = [shipped_classifier.classify(decoded[index]) for index in range(0, 30, 5)]
    assert [f["class"] for f in body["frames"]] == [e.label for e in expected]
    assert all(
        abs(f["confidence"] - e.confidence) < 1e-6 for f, e in zip(body["frames"], expected, strict=True)
    )

    votes = Counter(f["class"] for f in body["frames"])
    summary = body["summary"]
    assert summary["frames"] == 6 and summary["votes"] == max(votes.values())
    assert votes[summary["class"]] == max(votes.values())
    assert uploads_left(client) == [], "the temporary file is removed"


async def test_raw_mp4_bodies_and_the_fps_cap(api_client, video_path) -> None:
    client = await api_client()
    headers = {**API_AUTH, "Content-Type": "video/mp4"}
    capped = await client.post("/predict/video?fps=100", data=video_path.read_bytes(), headers=headers)
    body = await capped.json()
    assert capped.status == 200 and body["fps"] == 5.0 and len(body["frames"]) == 15
    slow = await client.post("/predict/video?fps=0.5", data=video_path.read_bytes(), headers=headers)
    assert [f["t_s"] for f in (await slow.json())["frames"]] == [0.0, 2.0]


async def test_bad_videos_are_refused_and_leave_no_file_behind(
    api_client, video_path, openapi_validator
) -> None:
    client = await api_client()
    data = video_path.read_bytes()
    jpeg = val_photos("glass")[0].read_bytes()
    cases = [
        ("/predict/video", upload(jpeg), 415, "not an MP4"),
        ("/predict/video", upload(data[: len(data) // 2]), 400, "MP4"),
        ("/predict/video", upload(b""), 400, "empty"),
        ("/predict/video?fps=abc", upload(data), 400, "fps"),
        ("/predict/video?fps=0", upload(data), 400, "fps"),
        ("/predict/video?fps=-1", upload(data), 400, "fps"),
    ]
    for url, form, status, words in cases:
        response = await client.post(url, data=form, headers=API_AUTH)
        body = await response.json()
        assert set(body) == ERROR_KEYS and response.status == status, (url, body)
        assert words in body["error"], (url, body)
        openapi_validator("/predict/video", "POST", status, body)
    assert uploads_left(client) == []


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("http.max_video_duration_s=2", "lasts 3.0 s"),
        ("http.max_video_frames=20", "30 frames"),
        ("http.max_video_pixels=100000", "pixels"),
        ("http.max_video_bytes=4096", "larger than 4096 bytes"),
    ],
)
async def test_video_limits_are_enforced_before_decoding(api_client, video_path, setting, words) -> None:
    client = await api_client(setting)
    response = await client.post("/predict/video", data=upload(video_path.read_bytes()), headers=API_AUTH)
    body = await response.json()
    assert response.status == 413 and words in body["error"], body
    assert uploads_left(client) == []


async def test_stale_uploads_from_a_crash_are_removed_at_start(api_config, aiohttp_client) -> None:
    config = api_config()
    uploads = config.storage.state_dir / "uploads"
    uploads.mkdir(parents=True)
    (uploads / "video-crashed.mp4").write_bytes(b"left over")
    client = await aiohttp_client(build_app(config, None, HealthRegistry()))
    assert uploads_left(client) == []
