"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by tests/test_api_fuzz.py): what a valid upload is.

/openapi.json says a body must be a complete JPEG, PNG or MP4 file; JSON Schema cannot check that, so
schemathesis is told here how to make such files: real TrashNet photos (as JPEG and re-encoded as PNG)
and a short MP4 made from them. Its positive tests then send files the bin must accept, and its negative
tests still send whatever else they like, which the bin must refuse with a listed 4xx.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import schemathesis
from hypothesis import strategies as st

from tests.conftest import val_photos

_PHOTOS = [val_photos(label)[0] for label in ("glass", "metal", "paper")]


def _png(path: Path) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.imread(str(path)))
    assert ok
    return encoded.tobytes()


def _mp4() -> bytes:
    frames = [cv2.resize(cv2.imread(str(path)), (320, 240)) for path in _PHOTOS]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "items.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (320, 240))
        for frame in frames:
            for _ in range(5):  # one second each
                writer.write(frame)
        writer.release()
        return path.read_bytes()


schemathesis.openapi.media_type("image/jpeg", st.sampled_from([path.read_bytes() for path in _PHOTOS]))
schemathesis.openapi.media_type("image/png", st.sampled_from([_png(path) for path in _PHOTOS]))
schemathesis.openapi.media_type("video/mp4", st.just(_mp4()))
