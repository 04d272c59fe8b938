"""Preprocessing follows the card exactly, for every tensor type, through one implementation."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from recyclex_edge.errors import ImageDecodeError
from recyclex_edge.model_card import CardInput
from recyclex_edge.preprocess import Preprocessor
from recyclex_edge.resize import shrink
from tests.conftest import val_photos


def spec(**changes: object) -> CardInput:
    values: dict[str, object] = {
        "width": 224,
        "height": 224,
        "color_order": "RGB",
        "resize": "squash",
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "dtype": "uint8",
    }
    values.update(changes)
    return CardInput.model_validate(values)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    image = cv2.imread(str(val_photos("metal")[0]))
    assert image is not None
    return cv2.resize(image, (640, 480))  # a camera-sized frame


def reference(frame: np.ndarray, card: CardInput) -> np.ndarray:
    """The card's recipe written out the slow, obvious way: swap channels, then resize, then normalise."""
    rgb = np.ascontiguousarray(frame[:, :, ::-1] if card.color_order == "RGB" else frame)
    resized = shrink(rgb, (card.width, card.height))
    return (resized.astype(np.float64) - np.asarray(card.mean)) / np.asarray(card.std)


# sha256 of shrink()'s output for fixed photos. The same hashes must come out on every CPU: arm64-check
# compares them under emulation, and a change here means every shipped model needs retraining.
PINNED_SHRINK_SHA256 = {
    ("cardboard", (224, 224)): "b2086fdd6d45285914f76e3f8771d05097df4494d1b31138e78bc38c2d075272",
    ("glass", (224, 224)): "230fa15ff239b04fb7d2ad4aa224a913eee1f277f6d2ec31311a496ef615aad4",
    ("metal", (160, 120)): "c39105e2a01fb5e066c52230c0b817a74b93698886f0461ec7c81cba74b3a15c",
    ("plastic", (224, 224), "camera"): "051650f7392d74887d5a746b1c2e8757a7d264cf90d6a26eb0d56009c22f1781",
}


def test_halvings_are_exact_integer_box_averages() -> None:
    """2x steps average in integers, rounding half up: nothing for a SIMD unit to round its own way."""
    photo = cv2.imread(str(val_photos("glass")[0]))  # 512x384
    halved = shrink(photo, (256, 192)).astype(int)
    quads = photo.astype(int)
    expected = (quads[0::2, 0::2] + quads[0::2, 1::2] + quads[1::2, 0::2] + quads[1::2, 1::2] + 2) >> 2
    np.testing.assert_array_equal(halved, expected)
    # Only the width can be halved here (384 < 2 * 224): it is, alone.
    wide = shrink(photo, (256, 384)).astype(int)
    np.testing.assert_array_equal(wide, (quads[:, 0::2] + quads[:, 1::2] + 1) >> 1)


def test_the_last_step_is_opencvs_bit_exact_bilinear() -> None:
    photo = cv2.imread(str(val_photos("glass")[0]))  # 512x384 -> width halved to 256, then bilinear
    half_width = shrink(photo, (256, 384))
    np.testing.assert_array_equal(
        shrink(photo, (224, 224)), cv2.resize(half_width, (224, 224), interpolation=cv2.INTER_LINEAR_EXACT)
    )


def test_camera_frames_are_shrunk_close_to_inter_area(frame: np.ndarray) -> None:
    """640x480 -> 224x224: halved exactly, then bilinear; nearly the pixels INTER_AREA would give."""
    fast = shrink(frame, (224, 224)).astype(int)
    exact = cv2.resize(frame, (224, 224), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(fast - exact).mean() < 1.0
    assert np.percentile(np.abs(fast - exact), 99) <= 8


def _pinned_input(label: str, camera: bool) -> np.ndarray:
    photo = cv2.imread(str(val_photos(label)[0]))
    # A camera-sized frame made without any resampling filter: each pixel repeated 2x2 (1024x768).
    return np.repeat(np.repeat(photo, 2, axis=0), 2, axis=1) if camera else photo


@pytest.mark.parametrize("key", sorted(PINNED_SHRINK_SHA256, key=str))
def test_shrink_output_is_pinned(key: tuple[object, ...]) -> None:
    label, size = str(key[0]), key[1]
    assert isinstance(size, tuple)
    out = shrink(_pinned_input(label, camera=len(key) == 3), size)
    assert out.shape == (size[1], size[0], 3)
    assert hashlib.sha256(out.tobytes()).hexdigest() == PINNED_SHRINK_SHA256[key]


def test_identity_quantisation_feeds_raw_rgb_pixels(frame: np.ndarray) -> None:
    card = spec()
    tensor = Preprocessor(card, np.uint8, scale=1.0, zero_point=0)(frame)
    assert tensor.shape == (1, 224, 224, 3) and tensor.dtype == np.uint8
    np.testing.assert_array_equal(tensor[0], reference(frame, card).astype(np.uint8))


def test_uint8_with_normalisation_and_quantisation(frame: np.ndarray) -> None:
    card = spec(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))
    scale, zero_point = 0.0078125, 128
    tensor = Preprocessor(card, np.uint8, scale, zero_point)(frame)
    expected = np.clip(np.rint(reference(frame, card) / scale + zero_point), 0, 255)
    assert np.abs(tensor[0].astype(int) - expected.astype(int)).max() <= 1


def test_int8_input(frame: np.ndarray) -> None:
    card = spec(mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4), dtype="int8")
    scale, zero_point = 0.0187, -14
    tensor = Preprocessor(card, np.int8, scale, zero_point)(frame)
    assert tensor.dtype == np.int8
    expected = np.clip(np.rint(reference(frame, card) / scale + zero_point), -128, 127)
    assert np.abs(tensor[0].astype(int) - expected.astype(int)).max() <= 1


def test_float_input(frame: np.ndarray) -> None:
    card = spec(mean=(127.5,) * 3, std=(127.5,) * 3, dtype="float32")
    tensor = Preprocessor(card, np.float32, 0.0, 0)(frame)
    assert tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0], reference(frame, card), atol=1e-5)


def test_bgr_models_keep_opencv_order(frame: np.ndarray) -> None:
    card = spec(color_order="BGR")
    tensor = Preprocessor(card, np.uint8, 1.0, 0)(frame)
    np.testing.assert_array_equal(tensor[0], reference(frame, card).astype(np.uint8))


def test_center_crop_takes_the_middle_square(frame: np.ndarray) -> None:
    card = spec(resize="center_crop")
    tensor = Preprocessor(card, np.uint8, 1.0, 0)(frame)
    middle = frame[:, 80:560]  # 640x480 -> the centred 480x480
    np.testing.assert_array_equal(tensor[0], reference(middle, card).astype(np.uint8))


def test_grey_and_bgra_frames_are_accepted(frame: np.ndarray) -> None:
    preprocess = Preprocessor(spec(), np.uint8, 1.0, 0)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert preprocess(grey).shape == (1, 224, 224, 3)
    bgra = cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)
    np.testing.assert_array_equal(preprocess(bgra), preprocess(frame))


def test_wrong_frames_are_refused_clearly(frame: np.ndarray) -> None:
    preprocess = Preprocessor(spec(), np.uint8, 1.0, 0)
    with pytest.raises(ImageDecodeError, match="uint8"):
        preprocess(frame.astype(np.float32))
    with pytest.raises(ImageDecodeError, match="shape"):
        preprocess(np.zeros((10, 10, 2), np.uint8))
