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


def rounding_noise(
    classifier: evaluate.Int8Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    temperature: float,
    threshold: float,
) -> dict[str, float]:
    """What one grey level of rounding noise does: a quarter of the input values moved by +-1.

    That is what a different SIMD rounding in a resize did on ARM (the Raspberry Pi issue): a model
    whose confidence moves by much under it is fragile, whatever its top-1.
    """
    rng = np.random.default_rng(SEED)
    step = rng.choice([-1, 0, 0, 0, 0, 0, 0, 1], size=images.shape).astype(np.int16)
    noisy = np.clip(images.astype(np.int16) + step, 0, 255).astype(np.uint8)
    clean_probs = evaluate.softmax(evaluate.int8_logits(classifier, images), temperature)
    noisy_probs = evaluate.softmax(evaluate.int8_logits(classifier, noisy), temperature)
    change = np.abs(noisy_probs.max(axis=1) - clean_probs.max(axis=1))
    decided = [np.where(p.max(axis=1) >= threshold, p.argmax(axis=1), -1) for p in (clean_probs, noisy_probs)]
    return {
        "top1": round(float((noisy_probs.argmax(axis=1) == labels).mean()), 4),
        "class_changes": int((clean_probs.argmax(axis=1) != noisy_probs.argmax(axis=1)).sum()),
        "decision_changes": int((decided[0] != decided[1]).sum()),
        "confidence_change_max": round(float(change.max()), 4),
        "confidence_change_p99": round(float(np.percentile(change, 99)), 4),
        "confidence_change_mean": round(float(change.mean()), 4),
    }
