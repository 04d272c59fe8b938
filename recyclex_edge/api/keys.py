"""Typed keys for what the application and each request carry (aiohttp's AppKey / RequestKey)."""

from __future__ import annotations

from aiohttp import web

from recyclex_edge.api.auth import Authenticator, Identity, RoutePolicy
from recyclex_edge.api.inference import InferenceSlot
from recyclex_edge.api.metrics import Metrics
from recyclex_edge.api.ratelimit import RateLimiter
from recyclex_edge.api.uploads import UploadSlots
from recyclex_edge.classifier import Classifier
from recyclex_edge.config import Config
from recyclex_edge.events import EventHub
from recyclex_edge.health import HealthRegistry

CONFIG = web.AppKey("config", Config)
HEALTH = web.AppKey("health", HealthRegistry)
EVENTS = web.AppKey("events", EventHub)
CLASSIFIER = web.AppKey[Classifier | None]("classifier")
METRICS = web.AppKey("metrics", Metrics)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)
ROUTE_POLICIES = web.AppKey[dict[str, RoutePolicy]]("route_policies")
# Set by the cleanup context; its service is None while no classifier is loaded (predict answers 503).
INFERENCE = web.AppKey("inference", InferenceSlot)
STARTED_MONOTONIC = web.AppKey("started_monotonic", float)
UPLOAD_SLOTS = web.AppKey("upload_slots", UploadSlots)
LIVE_SOCKETS = web.AppKey[set[web.WebSocketResponse]]("live_sockets")
# Live sockets open per client (token subject, else address), for the per-client cap.
LIVE_SOCKETS_PER_CLIENT = web.AppKey[dict[str, int]]("live_sockets_per_client")
# Host names answered with auth off (besides IP addresses), see middleware.host_middleware.
ALLOWED_HOSTS = web.AppKey[frozenset[str]]("allowed_hosts")

CLIENT = web.RequestKey("client", str)
IDENTITY = web.RequestKey("identity", Identity)
