"""Bearer authentication: static hashed tokens and JWTs (HS256 and a public key), scopes, public routes."""

from __future__ import annotations

import logging
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import API_ADMIN_AUTH, API_AUTH

JWT_SECRET = "a-shared-secret-of-at-least-32-characters!"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_protected_route_without_a_token_is_401_with_a_challenge(
    api_client, openapi_validator
) -> None:
    client = await api_client(classifier=None)
    response = await client.post("/predict/image", data=b"x", headers={"Content-Type": "image/jpeg"})
    body = await response.json()
    assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in body["error"]
    openapi_validator("/predict/image", "POST", 401, body)


@pytest.mark.parametrize(
    "header", ["Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer ", "Bearer a.b.c"], ids=str
)
async def test_a_wrong_token_or_scheme_is_401_invalid_token(api_client, header) -> None:
    client = await api_client(classifier=None)
    response = await client.get("/metrics", headers={"Authorization": header})
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_scopes_decide_who_may_call_what(api_client) -> None:
    client = await api_client(classifier=None)
    # The predict token reaches /predict (503 here only because this app has no model) but not /metrics.
    assert (await client.post("/predict/image", data=b"x", headers=API_AUTH)).status == 503
    forbidden = await client.get("/metrics", headers=API_AUTH)
    assert forbidden.status == 403 and 'scope="admin"' in forbidden.headers["WWW-Authenticate"]
    assert "'admin'" in (await forbidden.json())["error"]
    # admin may do everything.
    assert (await client.get("/metrics", headers=API_ADMIN_AUTH)).status == 200
    assert (await client.post("/predict/image", data=b"x", headers=API_ADMIN_AUTH)).status == 503


async def test_public_health_and_metrics_are_configurable(api_client) -> None:
    default = await api_client(classifier=None)
    assert (await default.get("/health")).status == 503, "public by default (503: no model here)"
    assert (await default.get("/metrics")).status == 401, "metrics need a token by default"
    assert (await default.get("/openapi.json")).status == 200

    flipped = await api_client(
        "http.auth.public_health=false", "http.auth.public_metrics=true", classifier=None
    )
    assert (await flipped.get("/health")).status == 401
    assert (await flipped.get("/health", headers=API_AUTH)).status == 503, "any valid token may read health"
    assert (await flipped.get("/metrics")).status == 200


def _jwt(key: object, algorithm: str, **claims: object) -> str:
    payload = {"sub": "dashboard-7", "scope": "predict", "exp": int(time.time()) + 60, **claims}
    return jwt.encode(payload, key, algorithm=algorithm)  # type: ignore[arg-type]


async def test_hs256_jwts_are_checked_for_signature_expiry_and_scope(api_client) -> None:
    client = await api_client(f"http.auth.jwt.secret={JWT_SECRET}", classifier=None)
    good = _jwt(JWT_SECRET, "HS256")
    assert (await client.post("/predict/image", data=b"x", headers=bearer(good))).status == 503
    assert (await client.get("/metrics", headers=bearer(good))).status == 403
    admin = _jwt(JWT_SECRET, "HS256", scope="predict admin")
    assert (await client.get("/metrics", headers=bearer(admin))).status == 200

    expired = _jwt(JWT_SECRET, "HS256", exp=int(time.time()) - 3600)
    response = await client.get("/metrics", headers=bearer(expired))
    assert response.status == 401 and "expired" in (await response.json())["error"]
    forged = _jwt("another-secret-that-is-also-long-enough!!", "HS256", scope="admin")
    assert (await client.get("/metrics", headers=bearer(forged))).status == 401
    no_exp = jwt.encode({"sub": "x", "scope": "admin"}, JWT_SECRET, algorithm="HS256")
    assert (await client.get("/metrics", headers=bearer(no_exp))).status == 401, "exp is required"
    # An unsigned token ('alg: none') must never pass.
    unsigned = jwt.encode(
        {"sub": "x", "scope": "admin", "exp": int(time.time()) + 60}, None, algorithm="none"
    )
    assert (await client.get("/metrics", headers=bearer(unsigned))).status == 401


async def test_jwts_signed_with_a_private_key_verify_with_the_configured_public_key(api_client) -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_key = pem.decode().replace("\n", "\\n")
    client = await api_client(
        "http.auth.jwt.algorithm=ES256",
        f'http.auth.jwt.public_key="{public_key}"',
        "http.auth.jwt.issuer=facility-idp",
        classifier=None,
    )
    token = _jwt(private_key, "ES256", scope=["admin"], iss="facility-idp")
    assert (await client.get("/metrics", headers=bearer(token))).status == 200
    wrong_issuer = _jwt(private_key, "ES256", scope=["admin"], iss="someone-else")
    assert (await client.get("/metrics", headers=bearer(wrong_issuer))).status == 401
    # The HS256-with-the-public-key confusion attack: the configured algorithm is the only one accepted.
    confused = jwt.encode(
        {"sub": "x", "scope": "admin", "exp": int(time.time()) + 60}, "k" * 40, algorithm="HS256"
    )
    assert (await client.get("/metrics", headers=bearer(confused))).status == 401


async def test_a_configured_audience_is_required_and_checked(api_client) -> None:
    client = await api_client(
        f"http.auth.jwt.secret={JWT_SECRET}", "http.auth.jwt.audience=bin-fleet-hall-3", classifier=None
    )
    right = _jwt(JWT_SECRET, "HS256", scope="admin", aud="bin-fleet-hall-3")
    assert (await client.get("/metrics", headers=bearer(right))).status == 200
    for_another = _jwt(JWT_SECRET, "HS256", scope="admin", aud="another-service")
    response = await client.get("/metrics", headers=bearer(for_another))
    assert response.status == 401 and "audience" in (await response.json())["error"].lower()
    without = _jwt(JWT_SECRET, "HS256", scope="admin")
    assert (await client.get("/metrics", headers=bearer(without))).status == 401, "aud is required then"


async def test_auth_off_opens_everything_and_the_log_says_so_loudly(api_client, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="recyclex_edge.api"):
        client = await api_client("http.auth.enabled=false", classifier=None)
    assert (await client.get("/metrics")).status == 200
    assert (
        await client.post("/predict/image", data=b"x", headers={"Content-Type": "image/jpeg"})
    ).status == 503
    assert any("AUTHENTICATION IS OFF" in record.getMessage() for record in caplog.records)
