"""The local HTTP API: who may call it, how often, how much they may send, and how long we wait.

The defaults suit a bin on a shared facility network: authentication on, the original backend's
10 requests a minute for `/predict/image`, uploads and decodes bounded so one client cannot exhaust a
Raspberry Pi's memory.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from recyclex_edge.config.base import Section
from recyclex_edge.config.connections import ConnectionsConfig

Scope = Literal["predict", "label", "admin"]

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour)\s*$")
_PERIOD_S = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


def parse_rate(rate: str) -> tuple[int, float]:
    """'10/minute' -> (10 requests, 60.0 seconds). Raises ValueError on anything else."""
    match = _RATE.match(rate)
    if match is None or int(match.group(1)) == 0:
        raise ValueError("a rate is 'N/second', 'N/minute' or 'N/hour' with N >= 1, e.g. '10/minute'")
    return int(match.group(1)), _PERIOD_S[match.group(2)]


def _predict_only() -> list[Scope]:
    return ["predict"]


class ApiTokenConfig(Section):
    """One static API token. Only its sha256 is stored, so a leaked config does not leak the token."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Who holds the token (e.g. 'technician-tablet'); the rate limit and access log use it.",
    )
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description=(
            'sha256 hex of the token. Make a random token and its hash with: python3 -c "import secrets, '
            'hashlib; t = secrets.token_urlsafe(32); print(t, hashlib.sha256(t.encode()).hexdigest())"'
        ),
    )
    scopes: list[Scope] = Field(
        default_factory=_predict_only,
        min_length=1,
        description="'predict' calls the /predict endpoints; 'label' labels captured items on the Review "
        "page; 'admin' may do everything, /metrics included.",
    )


class JwtConfig(Section):
    """Bearer JWTs from a facility identity service: HS256 with a shared secret, or a public key."""

    algorithm: Literal["HS256", "RS256", "ES256", "EdDSA"] = Field(
        "HS256", description="The only algorithm accepted; HS256 needs `secret`, the others `public_key`."
    )
    secret: SecretStr | None = Field(
        None, description="HS256 shared secret; use ${credential:jwt-secret} or ${ENV_VAR}, not a literal."
    )
    public_key: str | None = Field(None, description="PEM public key that verifies RS256/ES256/EdDSA tokens.")
    issuer: str | None = Field(None, description="Required `iss` claim. Empty: not checked.")
    audience: str | None = Field(None, description="Required `aud` claim. Empty: not checked.")
    leeway_s: float = Field(30.0, ge=0, le=600, description="Clock skew tolerated on `exp` and `nbf`.")

    @property
    def configured(self) -> bool:
        return self.secret is not None or self.public_key is not None

    # Field validators, not a model validator: an error on the whole section would print its value,
    # secret included; on the `secret` field itself the loader hides it.
    @field_validator("secret")
    @classmethod
    def _secret_fits(cls, secret: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if secret is None:
            return secret
        algorithm = info.data.get("algorithm", "HS256")
        if algorithm != "HS256":
            raise ValueError(f"algorithm {algorithm} verifies with jwt.public_key, not jwt.secret")
        if len(secret.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters; a short HS256 secret can be guessed")
        return secret

    @field_validator("public_key")
    @classmethod
    def _public_key_fits(cls, public_key: str | None, info: ValidationInfo) -> str | None:
        if public_key is None:
            return public_key
        if info.data.get("secret") is not None:
            raise ValueError("set either jwt.secret (HS256) or jwt.public_key, not both")
        if info.data.get("algorithm", "HS256") == "HS256":
            raise ValueError("jwt.public_key needs algorithm RS256, ES256 or EdDSA")
        return public_key


class AuthConfig(Section):
    """Who may call the API."""

    enabled: bool = Field(
        True, description="Require a bearer token. Turn off only in a lab; the log says so."
    )
    tokens: list[ApiTokenConfig] = Field(
        default_factory=list, description="Static API tokens, stored as sha256 hashes with their scopes."
    )
    jwt: JwtConfig = Field(default_factory=JwtConfig, description="Accept JWTs as bearer tokens too.")
    scope_claim: str = Field(
        "scope", min_length=1, description="JWT claim holding the scopes: a space-separated string or a list."
    )
    public_health: bool = Field(
        True, description="Serve /health without a token (technicians, load balancers)."
    )
    public_metrics: bool = Field(
        False, description="Serve /metrics without a token; otherwise it needs 'admin'."
    )

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(cls, tokens: list[ApiTokenConfig]) -> list[ApiTokenConfig]:
        names = [token.name for token in tokens]
        hashes = [token.sha256 for token in tokens]
        if len(set(names)) != len(names) or len(set(hashes)) != len(hashes):
            raise ValueError("every token needs its own name and its own hash")
        return tokens


class RateLimitConfig(Section):
    """Per-client token buckets, one per route. A client is the token's subject, else its address."""

    enabled: bool = Field(True, description="Limit requests per client. Turn off only for a bench.")
    predict_image: str = Field("10/minute", description="Budget for POST /predict/image, e.g. '10/minute'.")
    predict_video: str = Field("2/minute", description="Budget for POST /predict/video.")
    predict_live: str = Field("6/minute", description="New WebSocket connections to /predict/live.")
    other: str = Field("120/minute", description="Budget for every other route (/health, /metrics ...).")
    live_fps: float = Field(
        10.0, gt=0, le=60, description="Frames per second one live socket may send; extra frames are dropped."
    )
    max_clients: int = Field(
        10_000, ge=100, le=1_000_000, description="Buckets remembered; the least recently seen are forgotten."
    )

    @field_validator("predict_image", "predict_video", "predict_live", "other")
    @classmethod
    def _valid_rate(cls, rate: str) -> str:
        parse_rate(rate)
        return rate


class CacheConfig(Section):
    """Recent /predict/image answers, kept in process memory (a single bin needs no shared cache)."""

    enabled: bool = Field(True, description="Answer repeated uploads of the same bytes from memory.")
    ttl_s: float = Field(60.0, gt=0, le=3600, description="How long an answer stays valid.")
    max_entries: int = Field(
        256, ge=1, le=100_000, description="Answers kept; the least recently used go first."
    )


class LiveConfig(Section):
    """The /predict/live WebSocket."""

    max_connections: int = Field(4, ge=1, le=64, description="Live sockets open at once; more get 503.")
    max_connections_per_client: int = Field(
        2,
        ge=1,
        le=64,
        description="Live sockets one token (or address, with auth off) may hold at once; more get 429.",
    )
    max_message_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest frame in bytes; a bigger one closes the socket (1009).",
    )
    heartbeat_s: float = Field(
        20.0, gt=0, le=300, description="Ping interval; a peer that stops answering is closed."
    )
    event_queue_size: int = Field(
        100, ge=1, le=10_000, description="Events buffered per subscriber; when full the oldest are dropped."
    )


class HttpConfig(Section):
    """The local API and technician page."""

    host: str = Field("0.0.0.0", min_length=1, description="Address to listen on.")
    port: int = Field(8080, ge=1, le=65535, description="Port to listen on.")
    auth: AuthConfig = Field(default_factory=AuthConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    live: LiveConfig = Field(default_factory=LiveConfig)
    connections: ConnectionsConfig = Field(default_factory=ConnectionsConfig)
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "With auth off: Host names the API answers besides IP addresses, localhost and this machine's "
            "hostname (and hostname.local); others get 400, which stops DNS rebinding. '*': any."
        ),
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API, e.g. 'https://dash.example.org'; '*' for any.",
    )
    trusted_proxies: list[IPv4Network | IPv6Network] = Field(
        default_factory=list,
        description="Reverse proxies whose X-Forwarded-For is believed (addresses or CIDR networks).",
    )
    max_upload_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024, description="Largest accepted image upload."
    )
    max_concurrent_uploads: int = Field(
        8,
        ge=1,
        le=1024,
        description="Image uploads held in memory at once (receiving or classifying); beyond it 503.",
    )
    max_multipart_parts: int = Field(
        8, ge=1, le=1000, description="Parts a multipart upload may have before the 'file' field (400)."
    )
    max_pixels: int = Field(
        25_000_000,
        ge=10_000,
        le=200_000_000,
        description="Largest image (width x height, from its header) decoded; bigger is refused undecoded.",
    )
    max_video_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, le=2 * 1024 * 1024 * 1024, description="Largest accepted video upload."
    )
    max_video_duration_s: float = Field(120.0, gt=0, le=3600, description="Longest accepted video.")
    max_video_frames: int = Field(
        7200, ge=1, le=1_000_000, description="Most frames a video may have (declared or actually decoded)."
    )
    max_video_pixels: int = Field(
        8_294_400,
        ge=10_000,
        le=40_000_000,
        description="Largest video frame (width x height); 4K by default.",
    )
    video_fps_default: float = Field(2.0, gt=0, le=60, description="Frames sampled per second without ?fps=.")
    video_fps_max: float = Field(5.0, gt=0, le=60, description="Highest ?fps= accepted for /predict/video.")
    max_pending_inferences: int = Field(
        8, ge=1, le=1024, description="Inferences queued or running at once; beyond it requests get 503."
    )
    retry_after_s: int = Field(
        1, ge=1, le=3600, description="Retry-After sent with 503 when the queue is full."
    )
    read_timeout_s: float = Field(30.0, gt=0, le=3600, description="Longest time to receive an upload (408).")
    request_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="Longest time to answer an HTTP request (503); sockets excepted."
    )
    keepalive_timeout_s: float = Field(
        75.0, gt=0, le=3600, description="Idle keep-alive connections are closed."
    )

    @field_validator("video_fps_max")
    @classmethod
    def _fps_limits(cls, fps_max: float, info: ValidationInfo) -> float:
        if info.data.get("video_fps_default", 0) > fps_max:
            raise ValueError("must not be below http.video_fps_default")
        return fps_max
