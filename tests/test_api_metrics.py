"""GET /metrics: Prometheus text: requests, latency, inference, classes, queue, refusals, model, process."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import API_ADMIN_AUTH, API_AUTH, val_photos


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, /, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_what_happened(api_client, shipped_classifier) -> None:
    client = await api_client("http.rate_limit.enabled=true", "http.rate_limit.predict_image=1/minute")
    photo = val_photos("glass")[0].read_bytes()
    answer = await (
        await client.post("/predict/image", data=photo, headers={**API_AUTH, "Content-Type": "image/jpeg"})
    ).json()
    await client.post("/predict/image", data=photo, headers={**API_AUTH, "Content-Type": "image/jpeg"})  # 429
    await client.get("/no/such/path/123")
    await client.post("/predict/video", data=b"", headers=API_AUTH | {"Content-Type": "text/plain"})  # 415

    response = await client.get("/metrics", headers=API_ADMIN_AUTH)
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain; version=")
    metrics = samples(await response.text())
    assert (
        value(metrics, "recyclex_http_requests_total", route="/predict/image", method="POST", status="200")
        == 1
    )
    assert (
        value(metrics, "recyclex_http_requests_total", route="/predict/image", method="POST", status="429")
        == 1
    )
    assert (
        value(metrics, "recyclex_http_requests_total", route="unmatched", method="GET", status="404") == 1
    ), "unknown paths share one label, so a scanner cannot explode the series count"
    assert value(metrics, "recyclex_http_request_duration_seconds_count", route="/predict/image") == 2
    assert value(metrics, "recyclex_inference_seconds_count") == 1
    assert value(metrics, "recyclex_classifications_total", **{"class": answer["class"]}) == 1
    assert value(metrics, "recyclex_inference_queue_depth") == 0
    assert value(metrics, "recyclex_http_rejected_total", route="/predict/image", reason="rate_limited") == 1
    assert (
        value(metrics, "recyclex_http_rejected_total", route="/predict/video", reason="unsupported_media")
        == 1
    )
    assert value(metrics, "recyclex_cache_lookups_total", result="miss") == 1
    card = shipped_classifier.card
    model = {"name": card.name, "version": card.version, "sha256": card.sha256, "adaptation": "none"}
    assert value(metrics, "recyclex_model_info", **model) == 1
    assert value(metrics, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _ in metrics)


async def test_each_app_has_its_own_registry(api_client) -> None:
    first = await api_client("http.auth.public_metrics=true", classifier=None)
    second = await api_client("http.auth.public_metrics=true", classifier=None)
    await first.get("/health")
    await first.get("/health")
    metrics = samples(await (await second.get("/metrics")).text())
    assert value(metrics, "recyclex_http_requests_total", route="/health", method="GET", status="503") == 0
