"""CORS from configured origins, and one structured access-log line per request without its body."""

from __future__ import annotations

import asyncio
import logging

from tests.conftest import API_AUTH, API_PREDICT_TOKEN

ORIGIN = "https://dash.example.org"


async def test_cors_preflight_and_headers_only_for_configured_origins(api_client) -> None:
    client = await api_client(f"http.cors_origins=[{ORIGIN}]", classifier=None)
    preflight = await client.options(
        "/predict/image",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204 and preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]

    answer = await client.get("/health", headers={"Origin": ORIGIN})
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN, "error answers carry CORS headers too"
    assert "Retry-After" in answer.headers["Access-Control-Expose-Headers"]

    stranger = "https://evil.example.com"
    refused = await client.options(
        "/predict/image", headers={"Origin": stranger, "Access-Control-Request-Method": "POST"}
    )
    assert refused.status == 403 and "http.cors_origins" in (await refused.json())["error"]
    plain = await client.get("/health", headers={"Origin": stranger})
    assert "Access-Control-Allow-Origin" not in plain.headers


async def test_no_cors_headers_by_default(api_client) -> None:
    client = await api_client(classifier=None)
    response = await client.get("/health", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_one_access_log_line_per_request_with_no_secrets(api_client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="recyclex_edge.api.access")
    client = await api_client(classifier=None)
    await client.get("/health?probe=1")
    await client.post("/predict/image", data=b"\xff\xd8\xff-secret-bytes", headers=API_AUTH)

    def access_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "recyclex_edge.api.access"]

    for _ in range(100):  # the line is written once the response has gone out
        if len(access_lines()) == 2:
            break
        await asyncio.sleep(0.01)
    lines = access_lines()
    assert len(lines) == 2
    health, predict = lines
    assert health.startswith("method=GET path=/health status=503 ms=") and "client=127.0.0.1" in health
    assert "probe" not in health, "query strings stay out of the log"
    assert "method=POST path=/predict/image status=503" in predict and "subject=token:tester" in predict
    assert "bytes_in=16" in predict and "bytes_out=" in predict
    assert "secret-bytes" not in predict and API_PREDICT_TOKEN not in predict
