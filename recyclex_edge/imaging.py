"""Turning untrusted bytes into frames, safely.

Uploads are validated by content, not by their declared type: the format comes from the magic bytes and
the dimensions from the header, so an image with too many pixels is refused before a single one is
decoded, and a PNG whose data inflates to more than its header's pixels is refused after inflating only
as much as those pixels need.
"""

from __future__ import annotations

import struct
import zlib
from typing import Literal

import cv2
import numpy as np

from recyclex_edge.errors import ImageDecodeError

ImageFormat = Literal["jpeg", "png"]

# Start-of-frame markers carry the dimensions; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sniff_format(data: bytes) -> ImageFormat | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == _PNG_MAGIC:
        return "png"
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int]:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise ImageDecodeError("corrupt JPEG: expected a marker in the header")
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            offset += 2
            continue
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        if marker in _JPEG_SOF:
            if offset + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            raise ImageDecodeError("corrupt JPEG: no frame header before the image data")
        offset += 2 + length
    raise ImageDecodeError("truncated JPEG: the header ends before the image size")


def _png_dimensions(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageDecodeError("truncated or corrupt PNG: no IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def image_dimensions(data: bytes) -> tuple[ImageFormat, int, int]:
    """(format, width, height) read from the header alone. Raises ImageDecodeError."""
    image_format = sniff_format(data)
    if image_format is None:
        raise ImageDecodeError("not a JPEG or PNG image (checked by content, not by name or declared type)")
    width, height = _jpeg_dimensions(data) if image_format == "jpeg" else _png_dimensions(data)
    if width == 0 or height == 0:
        raise ImageDecodeError(f"image header says {width}x{height} pixels")
    return image_format, width, height


def _check_complete(data: bytes, image_format: ImageFormat) -> None:
    """Decoders fill a truncated image with grey and carry on; we would classify the grey. Refuse it."""
    if image_format == "jpeg":
        # 0xFFD9 cannot occur inside entropy-coded data (0xFF is stuffed there), so its presence after
        # the start of scan means the scan ended.
        start_of_scan = data.find(b"\xff\xda")
        if start_of_scan < 0 or data.rfind(b"\xff\xd9") < start_of_scan:
            raise ImageDecodeError("truncated JPEG: the image data ends before the end-of-image marker")
    elif b"IEND" not in data[-64:]:
        raise ImageDecodeError("truncated PNG: no IEND chunk at the end")


# Samples per pixel for each PNG colour type: grey, RGB, palette, grey + alpha, RGBA.
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_INFLATE_STEP_BYTES = 1 << 20


def _png_raw_bytes(width: int, height: int, bit_depth: int, colour_type: int, interlaced: bool) -> int:
    """Bytes the inflated image data must have: a filter byte and the packed samples of every row
    (of every Adam7 pass when interlaced)."""
    bits_per_pixel = _PNG_CHANNELS[colour_type] * bit_depth
    if not interlaced:
        return height * (1 + (width * bits_per_pixel + 7) // 8)
    total = 0
    # Adam7 passes: (x start, y start, x step, y step)
    for x0, y0, dx, dy in (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ):
        columns = (width - x0 + dx - 1) // dx if width > x0 else 0
        rows = (height - y0 + dy - 1) // dy if height > y0 else 0
        if columns and rows:
            total += rows * (1 + (columns * bits_per_pixel + 7) // 8)
    return total


def check_png_inflation(data: bytes) -> None:
    """Refuse a PNG whose image data inflates to more than its header's pixels need (an inflate bomb:
    a 100x100 header over gigabytes of zeros), inflating at most that much plus one step to find out.

    Walks the chunks, feeds the IDAT chunks to zlib with an output cap and stops as soon as the output
    passes the size the header implies. Costs about as much as inflating the real image once.
    """
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageDecodeError("truncated or corrupt PNG: no IHDR header")
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour_type not in _PNG_CHANNELS or bit_depth not in (1, 2, 4, 8, 16):
        raise ImageDecodeError(f"corrupt PNG: colour type {colour_type} with bit depth {bit_depth}")
    expected = _png_raw_bytes(width, height, bit_depth, colour_type, interlace == 1)
    inflater = zlib.decompressobj()
    produced = 0
    offset = 8
    view = memoryview(data)  # IDAT slices without copies
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            pending: bytes | memoryview = view[offset + 8 : offset + 8 + length]
            while pending:
                try:
                    out = inflater.decompress(pending, _INFLATE_STEP_BYTES)
                except zlib.error as error:
                    raise ImageDecodeError(
                        f"corrupt PNG: its image data does not inflate ({error})"
                    ) from None
                produced += len(out)
                if produced > expected:
                    raise ImageDecodeError(
                        f"PNG image data inflates to more than the {expected} bytes its "
                        f"{width}x{height} header needs (a decompression bomb)"
                    )
                pending = inflater.unconsumed_tail
        elif kind == b"IEND":
            break
        offset += 12 + length


def decode_image(data: bytes, max_pixels: int = 40_000_000) -> np.ndarray:
    """JPEG/PNG bytes -> BGR uint8 frame.

    Refuses oversized images before decoding them, and truncated or corrupt ones instead of guessing.
    """
    if not data:
        raise ImageDecodeError("empty image")
    image_format, width, height = image_dimensions(data)
    if width * height > max_pixels:
        raise ImageDecodeError(f"image is {width}x{height} pixels, more than the limit of {max_pixels}")
    _check_complete(data, image_format)
    if image_format == "png":
        check_png_inflation(data)
    frame = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise ImageDecodeError("corrupt or truncated image: the decoder could not read it")
    return frame
