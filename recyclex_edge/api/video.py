"""Sampling an MP4 file at a few frames per second and classifying each sample.

Runs in an inference worker thread, never on the event loop. The container's declared duration, frame
count and frame size are checked before any frame is decoded, and the real frame count and timestamps
are checked again while decoding, because a header can lie.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2

from recyclex_edge.api.errors import ApiError
from recyclex_edge.classifier import Classification, Classifier


@dataclass(frozen=True)
class VideoLimits:
    max_duration_s: float
    max_frames: int
    max_pixels: int


@dataclass(frozen=True)
class SampledFrame:
    t_s: float
    classification: Classification


def _refuse(message: str, status: int = 413, reason: str = "video_limit") -> ApiError:
    return ApiError(status, message, reason=reason)


def _check_declared(capture: cv2.VideoCapture, limits: VideoLimits) -> float:
    """The native frame rate, after refusing a video whose header already breaks a limit."""
    native_fps = capture.get(cv2.CAP_PROP_FPS)
    frames = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    width = capture.get(cv2.CAP_PROP_FRAME_WIDTH)
    height = capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
    if not native_fps or native_fps <= 0 or width <= 0 or height <= 0:
        raise _refuse("the MP4 has no readable video stream; send an H.264 or MPEG-4 MP4", 400, "corrupt")
    if width * height > limits.max_pixels:
        raise _refuse(
            f"video frames are {int(width)}x{int(height)} pixels, more than the limit of {limits.max_pixels}"
        )
    if frames > limits.max_frames:
        raise _refuse(f"the video has {int(frames)} frames, more than the limit of {limits.max_frames}")
    if frames / native_fps > limits.max_duration_s:
        raise _refuse(
            f"the video lasts {frames / native_fps:.1f} s, more than the limit of {limits.max_duration_s:g} s"
        )
    return float(native_fps)


def sample_video(
    path: Path, sample_fps: float, limits: VideoLimits, classifier: Classifier
) -> list[SampledFrame]:
    """Classify one frame every 1/sample_fps seconds of video time. Raises ApiError on a bad video."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise _refuse("the upload is not a readable MP4 video", 400, "corrupt")
        native_fps = _check_declared(capture, limits)
        samples: list[SampledFrame] = []
        next_sample_s = 0.0
        index = 0
        # grab() demuxes and decodes into the capture's buffer; retrieve() only converts the sampled frames.
        while capture.grab():
            if index >= limits.max_frames:
                raise _refuse(f"the video has more than {limits.max_frames} frames")
            t_s = index / native_fps
            if t_s > limits.max_duration_s:
                raise _refuse(f"the video lasts more than {limits.max_duration_s:g} s")
            if t_s + 1e-9 >= next_sample_s:
                ok, frame = capture.retrieve()
                if not ok or frame is None:
                    break
                samples.append(SampledFrame(round(t_s, 3), classifier.classify(frame)))
                next_sample_s += 1.0 / sample_fps
            index += 1
    finally:
        capture.release()
    if not samples:
        raise _refuse(
            "no frame of the video could be decoded; the file is truncated or corrupt", 400, "corrupt"
        )
    return samples


def summarise(samples: list[SampledFrame]) -> dict[str, object]:
    """The dominant class (most sampled frames; ties go to the higher mean confidence)."""
    votes = Counter(sample.classification.label for sample in samples)

    def mean_confidence(label: str) -> float:
        values = [s.classification.confidence for s in samples if s.classification.label == label]
        return sum(values) / len(values)

    dominant = max(votes, key=lambda label: (votes[label], mean_confidence(label)))
    return {
        "class": dominant,
        "confidence": mean_confidence(dominant),
        "votes": votes[dominant],
        "frames": len(samples),
    }
