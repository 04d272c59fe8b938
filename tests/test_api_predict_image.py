"""POST /predict/image on the real shipped model and real TrashNet photos: answers, cache, every refusal."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import ExitStack
from typing import Any

import cv2
from aiohttp import ClientResponse, FormData

from recyclex_edge.api.cache import ResultCache
from recyclex_edge.api.keys import INFERENCE
from recyclex_edge.imaging import decode_image
from tests.conftest import API_AUTH, val_photos

ERROR_KEYS = {"error", "code", "timestamp"}


def photo_bytes(label: str = "glass", index: int = 0) -> bytes:
    return val_photos(label)[index].read_bytes()


def multipart(data: bytes, field: str = "file") -> FormData:
    form = FormData()
    form.add_field(field, data, filename="item.jpg", content_type="application/octet-stream")
    return form


def raw(content_type: str) -> dict[str, str]:
    return {**API_AUTH, "Content-Type": content_type}


async def test_a_multipart_photo_is_classified_like_the_classifier_does(
    api_client, shipped_classifier, openapi_validator
) -> None:
    client = await api_client()
    data = photo_bytes("metal", 3)
    response = await client.post("/predict/image", data=multipart(data), headers=API_AUTH)
    body = await response.json()
    assert response.status == 200, body
    openapi_validator("/predict/image", "POST", 200, body)

    expected = shipped_classifier.classify(decode_image(data))
    assert body["class"] == expected.label
    assert abs(body["confidence"] - expected.confidence) < 1e-6
    assert set(body["probabilities"]) == set(shipped_classifier.labels)
    assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-3
    threshold = shipped_classifier.card.decision.threshold
    assert body["decision"] == (expected.label if expected.confidence >= threshold else "uncertain")
    assert body["model"] == {"name": shipped_classifier.card.name, "version": shipped_classifier.card.version}
    timing = body["timing"]
    assert timing["decode_ms"] > 0 and timing["inference_ms"] > 0
    assert timing["total_ms"] >= timing["decode_ms"] + timing["inference_ms"]
    assert body["cached"] is False


async def test_a_raw_png_body_is_accepted_and_content_beats_the_declared_type(api_client) -> None:
    client = await api_client()
    frame = decode_image(photo_bytes("paper"))
    ok, png = cv2.imencode(".png", frame)
    assert ok
    as_png = await client.post("/predict/image", data=png.tobytes(), headers=raw("image/png"))
    assert as_png.status == 200
    # JPEG bytes declared as PNG: the content decides, and it is a fine JPEG.
    mislabelled = await client.post("/predict/image", data=photo_bytes("paper"), headers=raw("image/png"))
    assert mislabelled.status == 200


async def test_the_config_threshold_overrides_the_cards(api_client) -> None:
    client = await api_client("decision.threshold=0.01")
    body = await (
        await client.post("/predict/image", data=photo_bytes("trash"), headers=raw("image/jpeg"))
    ).json()
    assert body["decision"] == body["class"], "every top class clears a 1% threshold"


async def test_a_per_class_threshold_from_the_config_reaches_the_decision(api_client) -> None:
    """decision.class_thresholds goes config -> ConfidencePolicy.for_model -> the answer."""
    photo = photo_bytes("glass")
    plain = await api_client("decision.threshold=0.5")
    body = await (await plain.post("/predict/image", data=photo, headers=raw("image/jpeg"))).json()
    assert body["class"] == "glass" and 0.5 <= body["confidence"] < 0.999999
    assert body["decision"] == "glass"
    strict = await api_client("decision.threshold=0.5", "decision.class_thresholds.glass=0.999999")
    body = await (await strict.post("/predict/image", data=photo, headers=raw("image/jpeg"))).json()
    assert body["class"] == "glass" and body["decision"] == "uncertain", "glass needs 0.999999 here"


async def test_the_same_bytes_are_answered_from_the_cache(api_client, openapi_validator) -> None:
    client = await api_client()
    data = photo_bytes("cardboard")
    first = await (await client.post("/predict/image", data=data, headers=raw("image/jpeg"))).json()
    again = await client.post("/predict/image", data=multipart(data), headers=API_AUTH)
    second = await again.json()
    openapi_validator("/predict/image", "POST", 200, second)
    assert first["cached"] is False and second["cached"] is True
    assert second["class"] == first["class"] and second["probabilities"] == first["probabilities"]
    assert second["timing"]["inference_ms"] == 0.0 and second["timing"]["total_ms"] > 0
    other = await (
        await client.post(
            "/predict/image",
            data=photo_bytes("cardboard", 1),
            headers=API_AUTH | {"Content-Type": "image/jpeg"},
        )
    ).json()
    assert other["cached"] is False


async def test_cached_answers_do_not_keep_the_embedding(api_client) -> None:
    # A full cache of embeddings would be 256 x 5 kB with model 2.0.0 that no answer ever shows.
    client = await api_client()
    service = client.app[INFERENCE].service
    assert service is not None
    data = photo_bytes("paper")
    digest = hashlib.sha256(data).hexdigest()
    fresh = await service.predict_image(data, digest)
    again = await service.predict_image(data, digest)
    assert not fresh.cached and fresh.classification.embedding is not None
    assert again.cached and again.classification.embedding is None
    assert again.classification.probabilities == fresh.classification.probabilities


async def test_cache_entries_expire_and_the_cache_can_be_switched_off(api_client) -> None:
    data = photo_bytes("plastic")
    short = await api_client("http.cache.ttl_s=0.2")
    await short.post("/predict/image", data=data, headers=raw("image/jpeg"))
    await asyncio.sleep(0.3)
    expired = await (await short.post("/predict/image", data=data, headers=raw("image/jpeg"))).json()
    assert expired["cached"] is False

    off = await api_client("http.cache.enabled=false")
    for _ in range(2):
        body = await (await off.post("/predict/image", data=data, headers=raw("image/jpeg"))).json()
        assert body["cached"] is False


def test_the_cache_is_bounded_and_dropped_when_the_model_changes() -> None:
    cache: ResultCache[str] = ResultCache(max_entries=2, ttl_s=60)
    cache.put("a", "v1", "model-1", "answer-a")
    cache.put("b", "v1", "model-1", "answer-b")
    assert cache.get("a", "v1", "model-1") == "answer-a"  # now "b" is least recently used
    cache.put("c", "v1", "model-1", "answer-c")
    assert cache.get("b", "v1", "model-1") is None and len(cache) == 2
    assert cache.get("a", "v2", "model-1") is None, "the model version is part of the key"
    assert cache.get("a", "v1", "model-2") is None, "another model file drops everything"
    assert len(cache) == 0


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


async def _error(response: ClientResponse) -> dict[str, Any]:
    body = await response.json()
    assert set(body) == ERROR_KEYS and body["code"] == response.status
    return body


async def test_bad_uploads_are_refused_with_json_errors(api_client, openapi_validator) -> None:
    client = await api_client("http.max_pixels=1000000")
    photo = photo_bytes()
    cases = [
        ("empty body", b"", raw("image/jpeg"), 400, "empty"),
        ("wrong declared type", photo, raw("text/plain"), 415, "multipart/form-data"),
        ("not an image", b"GIF89a" + bytes(100), raw("image/jpeg"), 415, "not a JPEG or PNG"),
        ("truncated JPEG", photo[: len(photo) // 2], raw("image/jpeg"), 400, "truncated"),
        ("header only", photo[:20], raw("image/jpeg"), 400, "JPEG"),
        ("decompression bomb", _png_header(60_000, 60_000) + bytes(64), raw("image/png"), 413, "pixels"),
    ]
    for name, data, headers, status, words in cases:
        response = await client.post("/predict/image", data=data, headers=headers)
        body = await _error(response)
        assert response.status == status, (name, body)
        assert words in body["error"], (name, body)
        openapi_validator("/predict/image", "POST", status, body)

    wrong_field = await client.post("/predict/image", data=multipart(photo, field="image"), headers=API_AUTH)
    body = await _error(wrong_field)
    assert wrong_field.status == 400 and "'file'" in body["error"] and "'image'" in body["error"]
    malformed = await client.post(
        "/predict/image", data=b"not multipart", headers=raw("multipart/form-data; boundary=xyz")
    )
    assert malformed.status == 400


async def test_an_upload_over_the_size_limit_is_refused_with_or_without_a_length(api_client) -> None:
    client = await api_client("http.max_upload_bytes=4096")
    photo = photo_bytes()
    assert len(photo) > 4096
    declared = await client.post("/predict/image", data=photo, headers=raw("image/jpeg"))
    assert declared.status == 413 and "4096" in (await _error(declared))["error"]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        for start in range(0, len(photo), 1024):
            yield photo[start : start + 1024]

    streamed = await client.post("/predict/image", data=chunked(), headers=raw("image/jpeg"))
    assert streamed.status == 413


async def test_a_trickling_upload_times_out_with_408(api_client) -> None:
    client = await api_client("http.read_timeout_s=0.3")
    photo = photo_bytes()

    async def trickle() -> AsyncIterator[bytes]:
        yield photo[:1024]
        await asyncio.sleep(2)
        yield photo[1024:]

    response = await client.post("/predict/image", data=trickle(), headers=raw("image/jpeg"))
    assert response.status == 408 and "longer than 0.3 s" in (await _error(response))["error"]


async def test_a_full_inference_queue_answers_503_with_retry_after_but_cached_answers_still_flow(
    api_client, shipped_classifier, openapi_validator
) -> None:
    client = await api_client("http.max_pending_inferences=1", "http.retry_after_s=3")
    service = client.app[INFERENCE].service
    assert service is not None
    cached = photo_bytes("glass", 1)
    assert (await client.post("/predict/image", data=cached, headers=raw("image/jpeg"))).status == 200

    with ExitStack() as held:
        # Occupy every interpreter of the real classifier, so the next job waits in its worker thread.
        for _ in range(shipped_classifier.pool_size):
            held.enter_context(shipped_classifier._runner())
        first = asyncio.create_task(
            client.post("/predict/image", data=photo_bytes("glass", 2), headers=raw("image/jpeg"))
        )
        for _ in range(200):
            if service.pending == 1:
                break
            await asyncio.sleep(0.01)
        assert service.pending == 1
        busy = await client.post("/predict/image", data=photo_bytes("glass", 3), headers=raw("image/jpeg"))
        body = await _error(busy)
        assert busy.status == 503 and busy.headers["Retry-After"] == "3" and "busy" in body["error"]
        openapi_validator("/predict/image", "POST", 503, body)
        hit = await client.post("/predict/image", data=cached, headers=raw("image/jpeg"))
        assert hit.status == 200 and (await hit.json())["cached"] is True
    assert (await first).status == 200, "the queued request completes once an interpreter is free"
    assert service.pending == 0


async def test_the_request_deadline_answers_503_and_the_queue_count_stays_truthful(
    api_client, shipped_classifier
) -> None:
    client = await api_client("http.request_timeout_s=0.2")
    service = client.app[INFERENCE].service
    assert service is not None
    with ExitStack() as held:
        for _ in range(shipped_classifier.pool_size):
            held.enter_context(shipped_classifier._runner())
        late = await client.post("/predict/image", data=photo_bytes("metal", 5), headers=raw("image/jpeg"))
        assert late.status == 503 and "longer than 0.2 s" in (await _error(late))["error"]
        assert service.pending == 1, "the abandoned job still holds its slot until its thread finishes"
    for _ in range(200):
        if service.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert service.pending == 0
