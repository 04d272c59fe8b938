"""GET /health, the JSON error shape for aiohttp's own errors (404, 405, 500), and the model-missing app."""

from __future__ import annotations

import logging

import jsonschema
from aiohttp import web

from recyclex_edge import __version__
from recyclex_edge.api import build_app
from recyclex_edge.api.openapi import OPENAPI
from recyclex_edge.health import HealthRegistry, Status
from tests.conftest import API_AUTH, API_PREDICT_TOKEN

ERROR_KEYS = {"error", "code", "timestamp"}


async def test_health_reports_components_model_and_version(api_client, openapi_validator) -> None:
    health = HealthRegistry()
    health.report("classifier", Status.OK, "loaded")
    health.report("mqtt", Status.FAILING, "broker unreachable", critical=False)
    client = await api_client(health=health)
    response = await client.get("/health")
    body = await response.json()
    assert response.status == 200, "a failing non-critical component only degrades the bin"
    assert body["status"] == "degraded" and body["version"] == __version__ and body["uptime_s"] >= 0
    assert body["model"]["name"] and len(body["model"]["sha256"]) == 64
    assert body["components"]["mqtt"]["status"] == "failing"
    assert body["components"]["mqtt"]["detail"] == "broker unreachable"
    openapi_validator("/health", "GET", 200, body)


async def test_health_is_503_and_predictions_are_503_without_a_model(api_client, openapi_validator) -> None:
    client = await api_client(classifier=None)
    response = await client.get("/health")
    body = await response.json()
    assert response.status == 503 and body["status"] == "failing" and body["model"] is None
    assert body["components"]["classifier"]["status"] == "failing"
    openapi_validator("/health", "GET", 503, body)

    for path in ("/predict/image", "/predict/video"):
        refused = await client.post(
            path, data=b"\xff\xd8\xff", headers={**API_AUTH, "Content-Type": "image/jpeg"}
        )
        error = await refused.json()
        assert refused.status == 503 and set(error) == ERROR_KEYS and "not loaded" in error["error"]
        openapi_validator(path, "POST", 503, error)
    live = await client.get("/predict/live", headers=API_AUTH)
    assert live.status == 503 and (await live.json())["code"] == 503


async def test_health_never_reveals_secrets(api_client) -> None:
    secret = "a-jwt-secret-that-is-long-enough-0123456789"
    client = await api_client(f"http.auth.jwt.secret={secret}")
    text = await (await client.get("/health")).text()
    assert secret not in text and API_PREDICT_TOKEN not in text and "sha256" in text


async def test_unknown_path_and_wrong_method_answer_json(api_client, openapi_validator) -> None:
    client = await api_client(classifier=None)
    missing = await client.get("/nope", headers=API_AUTH)
    body = await missing.json()
    assert missing.status == 404 and set(body) == ERROR_KEYS and "/openapi.json" in body["error"]
    assert body["timestamp"].endswith("+00:00")
    wrong = await client.delete("/health")
    body = await wrong.json()
    assert wrong.status == 405 and "GET" in wrong.headers["Allow"] and set(body) == ERROR_KEYS
    # DELETE /health is no operation of the document; its answer still has the documented error shape.
    jsonschema.validate(body, OPENAPI["components"]["schemas"]["Error"])


async def test_an_unexpected_exception_is_a_json_500_with_the_traceback_only_in_the_log(
    aiohttp_client, api_config, caplog
) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail")

    app = build_app(api_config(), None, HealthRegistry())
    app.router.add_get("/boom", broken)  # a route with a bug, behind the real middleware chain
    client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR, logger="recyclex_edge.api"):
        response = await client.get("/boom")
    body = await response.json()
    assert response.status == 500 and set(body) == ERROR_KEYS
    assert "secret internal detail" not in await response.text()
    logged = [r for r in caplog.records if r.exc_info and "secret internal detail" in str(r.exc_info[1])]
    assert logged, "the traceback must be logged on the bin"
