"""The downscale every model input goes through, on the device and in training (tools/train).

It imports nothing but OpenCV and NumPy so the training toolchain can use this very function
without the daemon's dependencies: one implementation is the preprocessing contract.

Every step is exact integer arithmetic, so a Raspberry Pi (ARM, NEON) and the x86 machine that
trained and calibrated the model produce bit-identical tensors. OpenCV's `INTER_LINEAR` is not:
its SIMD paths round differently with NEON than with AVX2 (up to a quarter of the pixels one grey
level apart), which moved the previous model's confidences by up to 0.25.
"""

from __future__ import annotations

import cv2
import numpy as np


def _mean_of(*parts: np.ndarray) -> np.ndarray:
    """The rounded (half up) mean of 2 or 4 equally shaped uint8 arrays, in integers."""
    total = parts[0].astype(np.uint16)
    for part in parts[1:]:
        total += part
    total += len(parts) // 2
    total >>= len(parts).bit_length() - 1
    return total.astype(np.uint8)


def _halve_width(frame: np.ndarray) -> np.ndarray:
    even = frame[:, : frame.shape[1] // 2 * 2]
    return _mean_of(even[:, 0::2], even[:, 1::2])


def _halve_height(frame: np.ndarray) -> np.ndarray:
    even = frame[: frame.shape[0] // 2 * 2]
    return _mean_of(even[0::2], even[1::2])


def _halve_both(frame: np.ndarray) -> np.ndarray:
    even = frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2]
    return _mean_of(even[0::2, 0::2], even[0::2, 1::2], even[1::2, 0::2], even[1::2, 1::2])


def shrink(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Downscale a uint8 image to `size` (width, height) without aliasing, identically on every CPU.

    Exact 2x box averages (integer sums, rounded half up) while a side is at least twice its target,
    both sides at once where both are, then OpenCV's `INTER_LINEAR_EXACT`, its bilinear filter in
    fixed point (bit-exact by design, whatever the SIMD unit), for the remaining factor below 2,
    where bilinear does not alias. A side that is already smaller is enlarged by the same filter.
    """
    width, height = size
    while frame.shape[1] >= 2 * width and frame.shape[0] >= 2 * height:
        frame = _halve_both(frame)
    while frame.shape[1] >= 2 * width:
        frame = _halve_width(frame)
    while frame.shape[0] >= 2 * height:
        frame = _halve_height(frame)
    if frame.shape[1] == width and frame.shape[0] == height:
        return np.ascontiguousarray(frame)
    return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR_EXACT)
