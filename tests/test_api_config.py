"""The http.* config section: the operators' key names, described fields, and clear refusals."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from recyclex_edge.config import load_config
from recyclex_edge.config.http import HttpConfig, parse_rate
from recyclex_edge.errors import ConfigError


def test_the_operators_key_names_still_work() -> None:
    config = load_config(
        None,
        [
            "http.host=127.0.0.1",
            "http.port=18080",
            "http.auth.enabled=false",
            "http.rate_limit.enabled=false",
        ],
        environ={},
    )
    assert (config.http.host, config.http.port) == ("127.0.0.1", 18080)
    assert config.http.auth.enabled is False and config.http.rate_limit.enabled is False


def test_defaults_are_safe_for_a_shared_network() -> None:
    http = HttpConfig()
    assert http.auth.enabled and http.rate_limit.enabled and not http.auth.public_metrics
    assert http.rate_limit.predict_image == "10/minute" and http.cors_origins == []
    assert http.cache.ttl_s == 60


def test_every_http_field_is_described() -> None:
    def undescribed(model: type[BaseModel], prefix: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                missing += undescribed(field.annotation, f"{prefix}.{name}")
            elif not field.description:
                missing.append(f"{prefix}.{name}")
        return missing

    assert undescribed(HttpConfig, "http") == []


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("http.rate_limit.predict_image=10 per minute", "http.rate_limit.predict_image", "N/minute"),
        ("http.rate_limit.other=0/second", "http.rate_limit.other", "N >= 1"),
        ("http.auth.jwt.secret=short", "http.auth.jwt.secret", "at least 32 characters"),
        ("http.auth.jwt.public_key=PEM", "http.auth.jwt.public_key", "RS256, ES256 or EdDSA"),
        ("http.auth.tokens=[{name: a, sha256: not-hex}]", "http.auth.tokens.0.sha256", "pattern"),
        (
            "http.auth.tokens=[{name: a, sha256: " + "a" * 64 + ", scopes: [root]}]",
            "http.auth.tokens.0.scopes.0",
            "",
        ),
        ("http.video_fps_default=10", "http.video_fps_max", "video_fps_default"),
        ("http.trusted_proxies=[not-an-address]", "http.trusted_proxies.0", ""),
    ],
)
def test_bad_values_are_refused_with_their_key(override: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, [override], environ={})
    assert any(p.key_path.startswith(key) and words in str(p) for p in error.value.problems), error.value


def test_two_tokens_may_not_share_a_name_or_a_hash() -> None:
    digest = "b" * 64
    with pytest.raises(ConfigError, match="own name"):
        load_config(
            None,
            [f"http.auth.tokens=[{{name: a, sha256: {digest}}}, {{name: a, sha256: {'c' * 64}}}]"],
            environ={},
        )


@pytest.mark.parametrize(
    "overrides",
    [
        ["http.auth.jwt.secret=tooshort-but-secret"],
        ["http.auth.jwt.secret=tooshort-but-secret", "http.auth.jwt.algorithm=RS256"],
        ["http.auth.jwt.secret=tooshort-but-secret" * 2, "http.auth.jwt.public_key=PEM"],
    ],
)
def test_a_jwt_secret_never_appears_in_an_error(overrides: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides, environ={})
    assert "tooshort-but-secret" not in str(error.value)


def test_rates_parse() -> None:
    assert parse_rate("10/minute") == (10, 60.0) and parse_rate(" 5 / second ") == (5, 1.0)
