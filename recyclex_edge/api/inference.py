"""Where the API's inference happens: off the event loop, bounded, cached.

A ThreadPoolExecutor with one worker per interpreter in the classifier's pool decodes and classifies;
the event loop only counts how many jobs are queued or running and refuses more than
`max_pending_inferences` with 503 + Retry-After, so a burst costs a quick refusal, not memory. A job's
slot is released when its thread finishes, not when its request goes away, so the count never lies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from recyclex_edge.api.cache import ResultCache
from recyclex_edge.api.errors import ApiError
from recyclex_edge.api.metrics import Metrics
from recyclex_edge.api.video import SampledFrame, VideoLimits, sample_video
from recyclex_edge.classifier import Classification, Classifier
from recyclex_edge.decision import ConfidencePolicy
from recyclex_edge.errors import ImageDecodeError
from recyclex_edge.imaging import decode_image, image_dimensions

T = TypeVar("T")


@dataclass(frozen=True)
class Prediction:
    classification: Classification
    decision: str
    decode_ms: float
    cached: bool

    def as_dict(self, total_ms: float) -> dict[str, Any]:
        c = self.classification
        fresh = not self.cached
        return {
            "class": c.label,
            "confidence": c.confidence,
            "probabilities": c.probabilities,
            "decision": self.decision,
            "model": {"name": c.model_name, "version": c.model_version},
            "timing": {
                "decode_ms": self.decode_ms if fresh else 0.0,
                "preprocess_ms": c.preprocess_ms if fresh else 0.0,
                "inference_ms": c.inference_ms if fresh else 0.0,
                "total_ms": total_ms,
            },
            "cached": self.cached,
        }


def check_image_header(data: bytes, max_pixels: int) -> None:
    """Format and size from the header alone, on the event loop (it is a few struct reads), so a
    decompression bomb never reaches a worker."""
    try:
        _, width, height = image_dimensions(data)
    except ImageDecodeError as error:
        raise ApiError(400, f"{error}; send a complete JPEG or PNG file", reason="corrupt") from None
    if width * height > max_pixels:
        raise ApiError(
            413,
            f"the image is {width}x{height} pixels, more than the limit of {max_pixels}; "
            "send a smaller image",
            reason="too_many_pixels",
        )


class InferenceService:
    """Decode + classify jobs for the API, sharing the daemon's classifier (and its interpreters)."""

    def __init__(
        self,
        classifier: Classifier,
        policy: ConfidencePolicy,
        metrics: Metrics,
        cache: ResultCache[tuple[Classification, str]] | None,
        *,
        max_pending: int,
        max_pixels: int,
        retry_after_s: int,
    ) -> None:
        self.classifier = classifier
        self.policy = policy
        self._metrics = metrics
        metrics.set_model(classifier.card)
        self._cache = cache
        self.max_pending = max_pending
        self._max_pixels = max_pixels
        self._retry_after_s = retry_after_s
        self._pending = 0
        self._executor = ThreadPoolExecutor(
            max_workers=classifier.pool_size, thread_name_prefix="api-inference"
        )

    def use_classifier(self, classifier: Classifier, policy: ConfidencePolicy) -> None:
        """Serve a reloaded model from now on. Jobs already running finish on the old one; cached
        answers are keyed by model version, so none of the old model's is served for the new one."""
        self.classifier, self.policy = classifier, policy
        self._metrics.set_model(classifier.card)

    @property
    def pending(self) -> int:
        return self._pending

    async def close(self) -> None:
        """Wait for running jobs (they hold interpreters) without blocking the loop; drop queued ones."""
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    def _release(self) -> None:
        self._pending -= 1
        self._metrics.queue_depth.set(self._pending)

    async def _run(self, job: Callable[..., T], *args: Any) -> T:
        if self._pending >= self.max_pending:
            raise ApiError(
                503,
                f"the bin is busy ({self._pending} inferences pending); retry in {self._retry_after_s} s",
                reason="queue_full",
                headers={"Retry-After": str(self._retry_after_s)},
            )
        future: Future[T] = self._executor.submit(job, *args)
        self._pending += 1
        self._metrics.queue_depth.set(self._pending)
        try:
            return await asyncio.wrap_future(future)
        finally:
            if future.done():
                self._release()
            else:  # the request was abandoned while its job runs: free the slot when the thread finishes
                loop = asyncio.get_running_loop()
                future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))

    def _decode_and_classify(self, data: bytes) -> tuple[Classification, float]:
        started = time.perf_counter()
        try:
            frame = decode_image(data, self._max_pixels)
        except ImageDecodeError as error:
            raise ApiError(400, f"{error}; send a complete JPEG or PNG file", reason="corrupt") from None
        decoded = time.perf_counter()
        return self.classifier.classify(frame), (decoded - started) * 1000.0

    def _record(self, classification: Classification) -> None:
        self._metrics.inference.observe((classification.preprocess_ms + classification.inference_ms) / 1000.0)
        self._metrics.classifications.labels(classification.label).inc()

    async def predict_image(self, data: bytes, digest: str | None) -> Prediction:
        """Classify JPEG/PNG bytes; `digest` (sha256 hex) enables the cache, None bypasses it."""
        card = self.classifier.card
        if self._cache is not None and digest is not None:
            hit = self._cache.get(digest, card.version, card.sha256)
            self._metrics.cache_lookups.labels("miss" if hit is None else "hit").inc()
            if hit is not None:
                return Prediction(hit[0], hit[1], 0.0, cached=True)
        check_image_header(data, self._max_pixels)
        classification, decode_ms = await self._run(self._decode_and_classify, data)
        self._record(classification)
        decision = self.policy.decide(classification.label, classification.confidence)
        if self._cache is not None and digest is not None:
            # Without the embedding (5 kB with model 2.0.0; 1.3 MiB over a full cache): no answer uses it.
            cached = replace(classification, embedding=None)
            self._cache.put(digest, card.version, card.sha256, (cached, decision))
        return Prediction(classification, decision, decode_ms, cached=False)

    async def predict_video(self, path: Path, sample_fps: float, limits: VideoLimits) -> list[SampledFrame]:
        samples = await self._run(sample_video, path, sample_fps, limits, self.classifier)
        for sample in samples:
            self._record(sample.classification)
        return samples


class InferenceSlot:
    """Where the API finds its inference service: empty while no model is loaded (the predict
    endpoints answer 503), filled at start-up or by a later reload-model, closed at clean-up."""

    def __init__(self, start: Callable[[Classifier, ConfidencePolicy], InferenceService]) -> None:
        self._start = start
        self.service: InferenceService | None = None

    def use_classifier(self, classifier: Classifier, policy: ConfidencePolicy) -> None:
        if self.service is None:
            self.service = self._start(classifier, policy)
        else:
            self.service.use_classifier(classifier, policy)

    async def close(self) -> None:
        if self.service is not None:
            await self.service.close()
