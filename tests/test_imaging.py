"""Untrusted bytes -> frames: by content, bombs refused before decoding, truncation refused."""

from __future__ import annotations

import struct
import time
import zlib

import cv2
import numpy as np
import pytest

from recyclex_edge.errors import ImageDecodeError
from recyclex_edge.imaging import decode_image, image_dimensions, sniff_format
from tests.conftest import val_photos


@pytest.fixture(scope="module")
def jpeg_bytes() -> bytes:
    return val_photos("glass")[0].read_bytes()


@pytest.fixture(scope="module")
def png_bytes(jpeg_bytes: bytes) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.imdecode(np.frombuffer(jpeg_bytes, np.uint8), cv2.IMREAD_COLOR))
    assert ok
    return encoded.tobytes()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_real_jpeg_and_png_are_read_by_content(jpeg_bytes: bytes, png_bytes: bytes) -> None:
    assert image_dimensions(jpeg_bytes) == ("jpeg", 512, 384)
    assert image_dimensions(png_bytes) == ("png", 512, 384)
    jpeg_frame, png_frame = decode_image(jpeg_bytes), decode_image(png_bytes)
    assert jpeg_frame.shape == png_frame.shape == (384, 512, 3)
    np.testing.assert_array_equal(jpeg_frame, png_frame)


def test_declared_names_do_not_matter_only_magic_bytes() -> None:
    assert sniff_format(b"GIF89a....") is None
    with pytest.raises(ImageDecodeError, match="not a JPEG or PNG"):
        decode_image(b"<html>not an image</html>")


def test_empty_body() -> None:
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_png_decompression_bomb_is_refused_before_decoding() -> None:
    # A header that claims 60000 x 60000 pixels followed by a tiny compressed body.
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 100_000))
        + _png_chunk(b"IEND", b"")
    )
    started = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="60000x60000"):
        decode_image(bomb, max_pixels=20_000_000)
    assert time.perf_counter() - started < 0.5, "the bomb must be refused from its header, not decoded"


def test_jpeg_dimensions_beyond_the_limit_are_refused(jpeg_bytes: bytes) -> None:
    sof = jpeg_bytes.find(b"\xff\xc0")
    assert sof > 0
    huge = bytearray(jpeg_bytes)
    huge[sof + 5 : sof + 9] = struct.pack(">HH", 40000, 40000)
    with pytest.raises(ImageDecodeError, match="40000x40000"):
        decode_image(bytes(huge), max_pixels=20_000_000)


@pytest.mark.parametrize("keep", [20, 400, 0.5, 0.99])
def test_truncated_jpeg_is_refused(jpeg_bytes: bytes, keep: float) -> None:
    cut = int(keep) if keep >= 1 else int(len(jpeg_bytes) * keep)
    with pytest.raises(ImageDecodeError, match=r"truncated|corrupt"):
        decode_image(jpeg_bytes[:cut])


def test_truncated_png_is_refused(png_bytes: bytes) -> None:
    with pytest.raises(ImageDecodeError, match=r"truncated|corrupt"):
        decode_image(png_bytes[: len(png_bytes) // 2])


def test_corrupt_jpeg_body_is_refused(jpeg_bytes: bytes) -> None:
    sos = jpeg_bytes.find(b"\xff\xda")
    garbage = jpeg_bytes[: sos + 2] + b"\x00\x01" + b"\xff\x00" * 10 + b"\xff\xd9"
    with pytest.raises(ImageDecodeError):
        decode_image(garbage)
