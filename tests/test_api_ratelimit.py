"""Per-client, per-route token buckets; 429 with Retry-After; trusted proxies; switching it off."""

from __future__ import annotations

import logging

from recyclex_edge.api.ratelimit import RateLimiter, TokenBucket
from tests.conftest import API_ADMIN_AUTH, API_AUTH


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"image": (10, 60.0)}, max_clients=100, clock=clock)
    assert [limiter.retry_after_s("a", "image") for _ in range(10)] == [0] * 10
    assert limiter.retry_after_s("a", "image") == 6, "one token every 6 s at 10/minute"
    assert limiter.retry_after_s("b", "image") == 0, "clients have their own buckets"
    clock.now_s += 6.0
    assert limiter.retry_after_s("a", "image") == 0
    assert limiter.retry_after_s("a", "image") > 0


def test_the_limiter_forgets_the_least_recently_seen_clients_beyond_its_bound() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"x": (1, 60.0)}, max_clients=2, clock=clock)
    limiter.retry_after_s("a", "x")
    limiter.retry_after_s("b", "x")
    limiter.retry_after_s("c", "x")  # pushes out "a"
    assert limiter.retry_after_s("a", "x") == 0, "a forgotten client starts with a full bucket"
    assert limiter.retry_after_s("c", "x") > 0


def test_a_token_bucket_for_frames_per_second() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5, 5, clock)
    assert [bucket.take() for _ in range(6)][-1] > 0
    clock.now_s += 0.2
    assert bucket.take() == 0


async def test_the_default_is_10_per_minute_for_predict_image_then_429(api_client, openapi_validator) -> None:
    client = await api_client("http.rate_limit.enabled=true", classifier=None)
    statuses = [(await client.post("/predict/image", data=b"x", headers=API_AUTH)).status for _ in range(10)]
    assert statuses == [503] * 10, "ten go through (503: this app has no model)"
    limited = await client.post("/predict/image", data=b"x", headers=API_AUTH)
    body = await limited.json()
    assert limited.status == 429 and 1 <= int(limited.headers["Retry-After"]) <= 6
    assert "retry in" in body["error"]
    openapi_validator("/predict/image", "POST", 429, body)
    # Another client (another token subject) and another route have their own budgets.
    assert (await client.post("/predict/image", data=b"x", headers=API_ADMIN_AUTH)).status == 503
    assert (await client.get("/health")).status == 503


async def test_failed_logins_are_rate_limited_by_address(api_client) -> None:
    client = await api_client(
        "http.rate_limit.enabled=true", "http.rate_limit.other=3/minute", classifier=None
    )
    bad = {"Authorization": "Bearer guess"}
    statuses = [(await client.get("/metrics", headers=bad)).status for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


async def test_forwarded_for_is_believed_only_from_trusted_proxies(api_client) -> None:
    untrusted = await api_client(
        "http.rate_limit.enabled=true", "http.rate_limit.other=1/minute", classifier=None
    )
    assert (await untrusted.get("/health", headers={"X-Forwarded-For": "10.0.0.1"})).status == 503
    spoofed = await untrusted.get("/health", headers={"X-Forwarded-For": "10.0.0.2"})
    assert spoofed.status == 429, "a client cannot get a fresh bucket by inventing X-Forwarded-For"

    proxied = await api_client(
        "http.rate_limit.enabled=true",
        "http.rate_limit.other=1/minute",
        "http.trusted_proxies=[127.0.0.0/8]",
        classifier=None,
    )
    assert (await proxied.get("/health", headers={"X-Forwarded-For": "10.0.0.1"})).status == 503
    assert (await proxied.get("/health", headers={"X-Forwarded-For": "10.0.0.2"})).status == 503
    again = await proxied.get("/health", headers={"X-Forwarded-For": "6.6.6.6, 10.0.0.1"})
    assert again.status == 429, "the right-most untrusted hop is the client; what it prepends is ignored"


async def test_switching_rate_limiting_off_is_logged_loudly(api_client, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="recyclex_edge.api"):
        client = await api_client("http.rate_limit.other=1/minute", classifier=None)
    assert [(await client.get("/health")).status for _ in range(3)] == [503, 503, 503]
    assert any("RATE LIMITING IS OFF" in record.getMessage() for record in caplog.records)


def test_a_long_idle_client_gets_its_burst_and_no_more() -> None:
    """The refill is capped at the bucket's capacity: an hour of silence is not an hour of requests."""
    clock = FakeClock()
    limiter = RateLimiter({"image": (10, 60.0)}, max_clients=100, clock=clock)
    limiter.retry_after_s("a", "image")
    clock.now_s += 3600.0
    allowed = [limiter.retry_after_s("a", "image") for _ in range(11)]
    assert allowed[:10] == [0] * 10 and allowed[10] > 0
    bucket = TokenBucket(5, 5, clock)
    clock.now_s += 1000.0
    assert [bucket.take() for _ in range(6)][-1] > 0


def test_a_wait_under_a_second_is_still_a_refusal() -> None:
    """At 2/second the third request waits 0.5 s: refused with Retry-After 1, never let through as 0."""
    clock = FakeClock()
    limiter = RateLimiter({"fast": (2, 1.0)}, max_clients=10, clock=clock)
    assert [limiter.retry_after_s("a", "fast") for _ in range(3)] == [0, 0, 1]
