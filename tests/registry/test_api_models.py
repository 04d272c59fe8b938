"""/api/models needs the admin scope and checks what it is sent before the registry sees it."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from recyclex_edge.api.keys import CONFIG
from recyclex_edge.api.models import add_model_routes
from recyclex_edge.errors import RegistryError
from recyclex_edge.health import HealthRegistry
from recyclex_edge.registry.service import ModelRegistry
from tests.conftest import API_ADMIN_AUTH, API_AUTH

REGISTRY = web.AppKey("test_registry", ModelRegistry)


def with_models(app: web.Application) -> None:
    """What Daemon.serve adds: a started registry and its routes."""
    registry = ModelRegistry(app[CONFIG], {}, HealthRegistry())
    registry.start()
    app[REGISTRY] = registry

    async def close(app: web.Application) -> None:
        registry.close()

    app.on_cleanup.append(close)
    add_model_routes(app, registry)


async def test_every_model_route_needs_the_admin_scope(api_client: Any, openapi_validator: Any) -> None:
    client = await api_client(classifier=None, customise=with_models)
    routes = [
        ("GET", "/api/models"),
        ("POST", "/api/models"),
        ("POST", "/api/models/rollback"),
        ("POST", "/api/models/7.2.0/activate"),
        ("DELETE", "/api/models/7.2.0"),
    ]
    for method, path in routes:
        anonymous = await client.request(method, path)
        predict = await client.request(method, path, headers=API_AUTH)
        assert (anonymous.status, predict.status) == (401, 403), (method, path)
        body = await predict.json()
        assert set(body) == {"error", "code", "timestamp"}
    listed = await client.get("/api/models", headers=API_ADMIN_AUTH)
    body = await listed.json()
    openapi_validator("/api/models", "GET", 200, body)
    assert body["active"] == "factory" and body["writable"] is True


async def test_uploads_are_checked_before_the_registry_sees_them(api_client: Any) -> None:
    client = await api_client(classifier=None, customise=with_models)
    octets = {**API_ADMIN_AUTH, "Content-Type": "application/octet-stream"}
    cases = [
        ({**API_ADMIN_AUTH, "Content-Type": "application/json"}, b"{}", 415, "send multipart/form-data"),
        (octets, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, 415, "not a RecycleX model package"),
        (octets, b"", 400, "empty"),
    ]
    for headers, data, status, message in cases:
        response = await client.post("/api/models", data=data, headers=headers)
        assert response.status == status and message in (await response.json())["error"]
    response = await client.post("/api/models?shadow=maybe", data=b"RXMODEL1", headers=octets)
    assert response.status == 400 and "shadow must be true or false" in (await response.json())["error"]
    response = await client.post("/api/models?shadow=true&shadow=false", data=b"RXMODEL1", headers=octets)
    assert response.status == 400 and "give shadow once" in (await response.json())["error"]
    response = await client.post("/api/models", data=b"RXMODEL1", headers=octets)
    body = await response.json()
    assert response.status == 400 and "truncated" in body["error"]
    audit = (await (await client.get("/api/models", headers=API_ADMIN_AUTH)).json())["audit"]
    assert audit[0]["who"] == "http:token:operator" and audit[0]["ok"] is False


async def test_one_package_at_a_time(api_client: Any) -> None:
    client = await api_client(classifier=None, customise=with_models)
    octets = {**API_ADMIN_AUTH, "Content-Type": "application/octet-stream"}
    registry = client.app[REGISTRY]
    with registry.transfer():  # a download in progress
        response = await client.post("/api/models", data=b"RXMODEL1", headers=octets)
        body = await response.json()
        assert response.status == 503 and "another model package" in body["error"]
        assert response.headers["Retry-After"] == "5"
        with pytest.raises(RegistryError, match="another model package"):
            registry.install_from_url("http://127.0.0.1:9/x.rxm", "0" * 64, who="mqtt", shadow=False)
    response = await client.post("/api/models", data=b"RXMODEL1", headers=octets)
    assert response.status == 400, "free again"


async def test_a_wrong_method_is_told_the_methods_of_that_path(api_client: Any) -> None:
    """'rollback' is not a version: DELETE /api/models/{version} must not claim /api/models/rollback."""
    client = await api_client(classifier=None, customise=with_models)
    for method, path, allowed in [
        ("OPTIONS", "/api/models/rollback", "POST"),
        ("DELETE", "/api/models/rollback", "POST"),
        ("PUT", "/api/models/7.2.0", "DELETE"),
    ]:
        response = await client.request(method, path, headers=API_ADMIN_AUTH)
        assert response.status == 405, (method, path)
        assert response.headers["Allow"] == allowed, (method, path)
        assert set(await response.json()) == {"error", "code", "timestamp"}
