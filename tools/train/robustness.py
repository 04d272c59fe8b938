"""How the shipped model holds up when the photo is not TrashNet's: synthetic camera and scene changes.

TrashNet is one phone camera, daylight, items on a white poster board. A bin's camera differs in
exposure, white balance, focus, noise and compression, and items land any way up on a darker
floor. We have no photos from other sources here, so each effect below is applied to the full-size
val photo before the runtime's resize, and the card records int8 top-1 under it. These are
stress tests, not a substitute for real photos from other bins; `grey_background` in particular
uses a crude mask (bright, unsaturated pixels) that also greys white parts of items.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import data
import evaluate
import numpy as np

SEED = 0


def _upside_down(bgr: np.ndarray) -> np.ndarray:
    return cv2.rotate(bgr, cv2.ROTATE_180)


def _dim(bgr: np.ndarray) -> np.ndarray:
    return (bgr.astype(np.float32) * 0.6).astype(np.uint8)


def _warm_light(bgr: np.ndarray) -> np.ndarray:
    gains = np.array([0.85, 1.0, 1.15], dtype=np.float32)  # B, G, R: tungsten-ish white balance
    return np.clip(bgr.astype(np.float32) * gains, 0, 255).astype(np.uint8)


def _defocus(bgr: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(bgr, (0, 0), sigmaX=2.0)


def _sensor_noise(bgr: np.ndarray) -> np.ndarray:
    # Seeded from the pixels so every run (and every thread) draws the same noise for a photo.
    rng = np.random.default_rng([SEED, int(bgr[::64, ::64].sum())])
    noisy = bgr.astype(np.float32) + rng.normal(0.0, 8.0, bgr.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _jpeg_q30(bgr: np.ndarray) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 30])
    assert ok
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)


def _grey_background(bgr: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
    board = (hsv[..., 1] < 40) & (hsv[..., 2] > 150)
    out = bgr.copy()
    out[board] = (95, 100, 105)  # a dull grey-brown, like a bin floor
    return out


EFFECTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "upside_down": _upside_down,
    "dim_0.6": _dim,
    "warm_light": _warm_light,
    "defocus_sigma2": _defocus,
    "sensor_noise_sigma8": _sensor_noise,
    "jpeg_q30": _jpeg_q30,
    "grey_background": _grey_background,
}


def robustness_top1(
    classifier: evaluate.Int8Classifier, val_split: data.Split, size_wh: tuple[int, int]
) -> dict[str, float]:
    """int8 top-1 on val under each effect."""
    result = {}
    for name, effect in EFFECTS.items():
        images = data.load_images(val_split.paths, size_wh, f"val {name}", effect)
        logits = evaluate.int8_logits(classifier, images)
        result[name] = round(float((logits.argmax(axis=1) == val_split.labels).mean()), 4)
    return result
