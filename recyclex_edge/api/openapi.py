"""The OpenAPI 3.1 description served at /openapi.json. Its schemas are plain JSON Schema 2020-12, and
tests validate real responses against them, so the document cannot drift from the code unnoticed."""

from __future__ import annotations

from typing import Any

from recyclex_edge import __version__
from recyclex_edge.api.errors import TRANSPORT_ERRORS
from recyclex_edge.api.uploads import UploadKind

# The technician page's own files (recyclex_edge/web); recyclex_edge.api.page serves these.
PAGE_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


# Answers any routed operation can give, whatever it does: the middlewares (rate limit, deadline) and
# the error handler. Those given before a route runs (the connection guard, aiohttp's parser) are
# errors.TRANSPORT_ERRORS; both are listed on every operation, so each cap is named in one place.
ROUTE_ERRORS: dict[int, str] = {
    400: "the request is malformed (headers, query or body); the message says what",
    429: "too many requests from this client (http.rate_limit); see Retry-After",
    500: "an unexpected error, logged on the bin",
    503: "the request took longer than http.request_timeout_s, or the bin is busy; see Retry-After",
}
# Operations that need a token (any, or a scope) add these.
AUTH_ERRORS: dict[int, str] = {401: "no token, or one the bin does not accept; see WWW-Authenticate"}
SCOPE_ERRORS: dict[int, str] = {403: "the token lacks the scope this operation needs"}


def _responses(ok: dict[str, Any], errors: dict[int, str] | None = None, *, auth: str = "none") -> Any:
    """`ok` (status -> response) plus every error the operation can answer, each with the Error schema.

    `auth`: "none" (always public), "token" (any valid token, or public by config), "scope" (a scope).
    """
    answers: dict[int, list[str]] = {}
    sources = [TRANSPORT_ERRORS, ROUTE_ERRORS]
    if auth in ("token", "scope"):
        sources.append(AUTH_ERRORS)
    if auth == "scope":
        sources.append(SCOPE_ERRORS)
    sources.append(errors or {})
    for source in sources:
        for status, description in source.items():
            answers.setdefault(status, []).append(description)
    responses = dict(ok)
    for status, descriptions in sorted(answers.items()):
        responses.setdefault(str(status), _error("; or ".join(descriptions)))
    return responses


_NUMBER = {"type": "number"}
_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "code", "timestamp"],
        "additionalProperties": False,
        "properties": {
            "error": {"type": "string", "minLength": 1},
            "code": {"type": "integer", "minimum": 400, "maximum": 599},
            "timestamp": {"type": "string", "format": "date-time"},
        },
    },
    "Component": {
        "type": "object",
        "required": ["status", "detail", "since"],
        "additionalProperties": False,
        "properties": {
            "status": {"enum": ["ok", "degraded", "failing", "disabled"]},
            "detail": {"type": "string"},
            "since": {"type": "string", "format": "date-time"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "uptime_s", "model", "components"],
        "additionalProperties": False,
        "properties": {
            "status": {"enum": ["ok", "degraded", "failing"]},
            "version": {"type": "string"},
            "uptime_s": {"type": "number", "minimum": 0},
            "model": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["name", "version", "sha256"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "version": {"type": "string"},
                            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        },
                    },
                ]
            },
            "components": {"type": "object", "additionalProperties": _ref("Component")},
        },
    },
    "Model": {
        "type": "object",
        "required": ["name", "version"],
        "additionalProperties": False,
        "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
    },
    "Prediction": {
        "type": "object",
        "required": ["class", "confidence", "probabilities", "decision", "model", "timing", "cached"],
        "additionalProperties": False,
        "properties": {
            "class": {"type": "string"},
            "confidence": _PROBABILITY,
            "probabilities": {"type": "object", "additionalProperties": _PROBABILITY},
            "decision": {"type": "string", "description": "The class, or 'uncertain' below the threshold."},
            "model": _ref("Model"),
            "timing": {
                "type": "object",
                "required": ["decode_ms", "preprocess_ms", "inference_ms", "total_ms"],
                "additionalProperties": False,
                "properties": {
                    "decode_ms": _NUMBER,
                    "preprocess_ms": _NUMBER,
                    "inference_ms": _NUMBER,
                    "total_ms": _NUMBER,
                },
            },
            "cached": {"type": "boolean", "description": "Answered from the in-process cache (timings 0)."},
        },
    },
    "CapturedItem": {
        "type": "object",
        "required": ["id", "captured_at", "reason", "class", "confidence", "decision", "label"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "description": "The event id of the item."},
            "captured_at": {"type": "string", "format": "date-time"},
            "reason": {"enum": ["uncertain", "sample", "import"]},
            "class": {"type": "string", "description": "The bin's guess when it decided."},
            "confidence": _PROBABILITY,
            "decision": {"type": "string"},
            "model_version": {"type": "string"},
            "width": {"type": "integer", "minimum": 1},
            "height": {"type": "integer", "minimum": 1},
            "label": {"type": ["string", "null"], "description": "What a person said it is; null: not yet."},
            "labelled_by": {"type": ["string", "null"]},
            "labelled_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Captures": {
        "type": "object",
        "required": ["items", "backlog", "labelled", "counts", "labels", "adaptation", "adaptation_detail"],
        "properties": {
            "items": {"type": "array", "items": _ref("CapturedItem"), "description": "Newest first."},
            "backlog": {"type": "integer", "minimum": 0, "description": "Items waiting for a label."},
            "labelled": {"type": "integer", "minimum": 0},
            "items_total": {"type": "integer", "minimum": 0},
            "counts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
            "labels": {"type": "array", "items": {"type": "string"}, "description": "Allowed labels."},
            "adaptation": {
                "type": ["object", "null"],
                "description": "The site adaptation in use: id, head, cross-validated figures.",
            },
            "adaptation_detail": {"type": "string"},
            "drift": {"type": ["object", "null"]},
        },
    },
    "VideoPrediction": {
        "type": "object",
        "required": ["fps", "frames", "summary", "model", "timing"],
        "additionalProperties": False,
        "properties": {
            "fps": {"type": "number", "exclusiveMinimum": 0, "description": "Sampling rate actually used."},
            "frames": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["t_s", "class", "confidence"],
                    "additionalProperties": False,
                    "properties": {
                        "t_s": {"type": "number", "minimum": 0},
                        "class": {"type": "string"},
                        "confidence": _PROBABILITY,
                    },
                },
            },
            "summary": {
                "type": "object",
                "required": ["class", "confidence", "votes", "frames"],
                "additionalProperties": False,
                "properties": {
                    "class": {"type": "string", "description": "The class of most sampled frames."},
                    "confidence": _PROBABILITY,
                    "votes": {"type": "integer", "minimum": 1},
                    "frames": {"type": "integer", "minimum": 1},
                },
            },
            "model": _ref("Model"),
            "timing": {
                "type": "object",
                "required": ["total_ms"],
                "additionalProperties": False,
                "properties": {"total_ms": _NUMBER},
            },
        },
    },
}


def _upload_body(media_types: list[str], what: str) -> dict[str, Any]:
    """A required body: one non-empty file of `media_types`, as the body itself or the multipart `file`."""
    part = {"type": "string", "contentMediaType": "application/octet-stream", "minLength": 1}
    return {
        "required": True,
        "description": f"{what}: the file itself as the body, or as the multipart/form-data field `file`.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": part},
                    # Other fields are skipped: plain-token names, one part each (no arrays), and fewer
                    # than UploadKind.max_parts of them before the file (each costs a parser pass).
                    "propertyNames": {"pattern": "^[A-Za-z0-9_.-]+$"},
                    "additionalProperties": {"not": {"type": "array"}},
                    "maxProperties": UploadKind.max_parts,
                },
                "encoding": {"file": {"contentType": ", ".join(media_types)}},
            },
            **{media_type: _file(media_type, what) for media_type in media_types},
        },
    }


def _file(media_type: str, what: str) -> dict[str, Any]:
    return {"schema": {"type": "string", "contentMediaType": media_type, "minLength": 1, "description": what}}


_SCHEMAS["ModelResult"] = {
    "type": "object",
    "required": ["ok", "version", "detail"],
    "additionalProperties": False,
    "properties": {"ok": {"const": True}, "version": {"type": "string"}, "detail": {"type": "string"}},
}
_SCHEMAS["Models"] = {
    "type": "object",
    "required": ["models", "active", "writable", "watch", "shadow", "last_rollback", "promote", "audit"],
    "properties": {
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["version", "name", "model_version", "sha256", "factory", "active", "candidate"],
                "properties": {
                    "version": {"type": "string"},
                    "name": {"type": "string"},
                    "model_version": {"type": "string"},
                    "sha256": {"type": "string"},
                    "factory": {"type": "boolean"},
                    "active": {"type": "boolean"},
                    "candidate": {"type": "boolean"},
                    "encrypted": {"type": "boolean"},
                    "installed_at": {"type": ["string", "null"]},
                    "installed_by": {"type": ["string", "null"]},
                    "source": {"type": ["string", "null"]},
                    "signer": {"type": ["string", "null"]},
                },
            },
        },
        "active": {"type": "string"},
        "writable": {"type": "boolean"},
        "problem": {"type": ["string", "null"]},
        "watch": {"type": ["object", "null"]},
        "shadow": {"type": ["object", "null"]},
        "last_rollback": {"type": ["object", "null"]},
        "promote": {"enum": ["manual", "auto"]},
        "audit": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["ts", "who", "action", "ok"],
                "properties": {
                    "ts": {"type": "string"},
                    "who": {"type": "string"},
                    "action": {"type": "string"},
                    "target": {"type": ["string", "null"]},
                    "ok": {"type": "boolean"},
                    "detail": {"type": "string"},
                },
            },
        },
    },
}

_SECURED = [{"bearer": ["predict"]}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "RecycleX Edge bin API",
        "version": __version__,
        "description": (
            "The HTTP API of one smart recycling bin. Every error is JSON: {error, code, timestamp}."
        ),
    },
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A static API token or a JWT; scopes 'predict', 'label' and 'admin'.",
            }
        },
    },
    "paths": {
        "/health": {
            "get": {
                "summary": "Overall and per-component health",
                "description": "Public unless http.auth.public_health is false; then any valid token.",
                "security": [{}, {"bearer": []}],
                "responses": _responses(
                    {
                        "200": _json(_ref("Health"), "ok or degraded"),
                        "503": _json(
                            {"oneOf": [_ref("Health"), _ref("Error")]},
                            "failing (the health body), or the request timed out (an error)",
                        ),
                    },
                    auth="token",
                ),
            }
        },
        "/predict/image": {
            "post": {
                "summary": "Classify one JPEG or PNG image",
                "security": _SECURED,
                "requestBody": _upload_body(["image/jpeg", "image/png"], "a complete JPEG or PNG image"),
                "responses": _responses(
                    {"200": _json(_ref("Prediction"), "the classification")},
                    {
                        400: "the upload is empty, interrupted, malformed, or not a decodable image",
                        408: "the upload came in too slowly (http.read_timeout_s)",
                        413: "the upload or the image's pixels exceed the limits",
                        415: "not a JPEG or PNG (by Content-Type and by its first bytes)",
                        503: "no model is loaded, too many inferences are pending, or the request "
                        "timed out; see Retry-After",
                    },
                    auth="scope",
                ),
            }
        },
        "/predict/video": {
            "post": {
                "summary": "Classify an MP4 video sampled at ?fps= frames per second",
                "security": _SECURED,
                "parameters": [
                    {
                        "name": "fps",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number", "exclusiveMinimum": 0},
                        "description": "Samples per second (default 2, capped by http.video_fps_max).",
                    }
                ],
                "requestBody": _upload_body(["video/mp4"], "a complete MP4 video"),
                "responses": _responses(
                    {"200": _json(_ref("VideoPrediction"), "per-frame results")},
                    {
                        400: "fps is not a positive number, or the upload is empty, interrupted, "
                        "malformed or not a readable video",
                        408: "the upload came in too slowly (http.read_timeout_s)",
                        413: "the upload, its duration, frames or pixels exceed the limits",
                        415: "not an MP4 (by Content-Type and by its first bytes)",
                        503: "no model is loaded, too many inferences are pending, or the request "
                        "timed out; see Retry-After",
                    },
                    auth="scope",
                ),
            }
        },
        "/predict/live": {
            "get": {
                "summary": "WebSocket: binary frames in, one JSON result per frame out (docs/http-api.md)",
                "security": _SECURED,
                "responses": _responses(
                    {"101": {"description": "switching to WebSocket"}},
                    {
                        400: "not a WebSocket upgrade request",
                        503: "no model is loaded, or every live socket is taken; see Retry-After",
                    },
                    auth="scope",
                ),
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "security": [{"bearer": ["admin"]}],
                "responses": _responses(
                    {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                    auth="scope",
                ),
            }
        },
        # The technician page and the small API it reads (recyclex_edge/api/page.py).
        "/": {
            "get": {
                "summary": "The technician page (HTML; it holds no data, it calls the endpoints below)",
                "security": [],
                "responses": _responses({"200": {"description": "the page", "content": {"text/html": {}}}}),
            }
        },
        "/static/{name}": {
            "get": {
                "summary": "The page's script and style",
                "security": [],
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(PAGE_ASSETS)},
                    }
                ],
                "responses": _responses({"200": {"description": "the file"}}, {404: "no such file"}),
            }
        },
        "/api/state": {
            "get": {
                "summary": "Mode, counters, fill levels, detector state, device, and who the caller is",
                "security": [{}, {"bearer": []}],
                "responses": _responses({"200": _json({"type": "object"}, "the bin's state")}, auth="token"),
            }
        },
        "/api/history": {
            "get": {
                "summary": "Recent events (without images) and per-minute series of the last hours",
                "security": [{}, {"bearer": []}],
                "responses": _responses(
                    {"200": _json({"type": "object"}, "events and series")}, auth="token"
                ),
            }
        },
        "/api/events/{event_id}/thumbnail.jpg": {
            "get": {
                "summary": "A recent event's small photo",
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _responses(
                    {"200": {"description": "JPEG", "content": {"image/jpeg": {}}}},
                    {404: "no such event, or it is too old to keep a photo"},
                    auth="token",
                ),
            }
        },
        "/api/camera.jpg": {
            "get": {
                "summary": "The latest camera frame (re-encoded at most once a second)",
                "security": [{"bearer": []}],
                "responses": _responses(
                    {"200": {"description": "JPEG", "content": {"image/jpeg": {}}}},
                    {503: "no camera frame yet, or the request timed out; see Retry-After"},
                    auth="token",
                ),
            }
        },
        "/api/commands/{name}": {
            "post": {
                "summary": "Run a command as MQTT does (mode, test-actuator, reload-model, ...)",
                "security": [{"bearer": ["admin"]}],
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": _responses(
                    {"200": _json({"type": "object"}, "{ok: true, result}")},
                    {
                        400: "the body is not a JSON object with the arguments this command takes",
                        404: "no such command",
                        409: "another command is running, or the command failed (the message says why)",
                        413: "the body is larger than a command needs",
                        415: "the body is not application/json",
                    },
                    auth="scope",
                ),
            }
        },
        # The model registry (recyclex_edge/api/models.py); admin scope.
        "/api/models": {
            "get": {
                "summary": "Every model version, the watch, the shadow run, the last rollback, the audit log",
                "security": [{"bearer": ["admin"]}],
                "responses": _responses({"200": _json(_ref("Models"), "the registry")}, auth="scope"),
            },
            "post": {
                "summary": "Install a signed model package (recyclex-edge model pack) and activate it",
                "security": [{"bearer": ["admin"]}],
                "parameters": [
                    {
                        "name": "shadow",
                        "in": "query",
                        "required": False,
                        "schema": {"enum": ["true", "false", "1", "0"]},
                        "description": "true: run it beside the active model as a shadow instead.",
                    }
                ],
                "requestBody": _upload_body(
                    ["application/octet-stream"], "a signed RecycleX model package (recyclex-edge model pack)"
                ),
                "responses": _responses(
                    {"200": _json(_ref("ModelResult"), "installed")},
                    {
                        400: "not a valid package (truncated, tampered, unsigned, untrusted), a bad "
                        "?shadow=, or a malformed upload",
                        408: "the upload came in too slowly (http.read_timeout_s)",
                        409: "refused: does not load, other labels, busy ...",
                        413: "the package is larger than model.max_package_bytes",
                        415: "not application/octet-stream or a multipart form, or not a package (by "
                        "its first bytes)",
                        503: "another package is being transferred; see Retry-After",
                    },
                    auth="scope",
                ),
            },
        },
        "/api/models/{version}/activate": {
            "post": {
                "summary": "Make an installed version active (promotes a shadow candidate)",
                "security": [{"bearer": ["admin"]}],
                "parameters": [
                    {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _responses(
                    {"200": _json(_ref("ModelResult"), "active")},
                    {409: "refused: no such version, does not load, other labels, busy ..."},
                    auth="scope",
                ),
            }
        },
        "/api/models/rollback": {
            "post": {
                "summary": "Go back to the version active before this one",
                "security": [{"bearer": ["admin"]}],
                "responses": _responses(
                    {"200": _json(_ref("ModelResult"), "rolled back")},
                    {409: "refused: nothing to roll back to, does not load, busy ..."},
                    auth="scope",
                ),
            }
        },
        "/api/models/{version}": {
            "delete": {
                "summary": "Delete an installed version that is not active",
                "security": [{"bearer": ["admin"]}],
                "parameters": [
                    {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _responses(
                    {"200": _json(_ref("ModelResult"), "removed")},
                    {409: "refused: no such version, or it is active"},
                    auth="scope",
                ),
            }
        },
        # The Review view's API (recyclex_edge/api/review.py): field learning.
        "/api/captures": {
            "get": {
                "summary": "Captured items to review, newest first, with counts, backlog and the adaptation",
                "security": [{"bearer": ["label"]}],
                "parameters": [
                    {
                        "name": "labelled",
                        "in": "query",
                        "required": False,
                        "schema": {"enum": ["true", "false"]},
                        "description": "Only labelled (true) or unlabelled (false) items; all when absent.",
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "Page on: items older than this id.",
                    },
                ],
                "responses": _responses(
                    {"200": _json(_ref("Captures"), "items and counts")},
                    {
                        400: "a bad query parameter",
                        503: "field learning is not available (see the capture component in /health)",
                    },
                    auth="scope",
                ),
            }
        },
        "/api/captures/{event_id}/image.jpg": {
            "get": {
                "summary": "A captured item's photo at camera resolution",
                "security": [{"bearer": ["label"]}],
                "parameters": [
                    {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": _responses(
                    {"200": {"description": "JPEG", "content": {"image/jpeg": {}}}},
                    {
                        404: "no such captured item",
                        503: "field learning is not available (see the capture component in /health)",
                    },
                    auth="scope",
                ),
            }
        },
        "/api/captures/{event_id}/label": {
            "put": {
                "summary": "Label a captured item ('none': no item / not waste); null takes the label back",
                "security": [{"bearer": ["label"]}],
                "parameters": [
                    {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["label"],
                                "additionalProperties": False,
                                "properties": {"label": {"type": ["string", "null"], "minLength": 1}},
                            }
                        }
                    },
                },
                "responses": _responses(
                    {"200": _json(_ref("CapturedItem"), "the item as labelled")},
                    {
                        400: "the body is not {\"label\": <one of the active model's labels, 'none' "
                        "or null>}",
                        404: "no such captured item",
                        413: "the body is larger than a label needs",
                        415: "the body is not application/json",
                        503: "field learning is not available (see the capture component in /health)",
                    },
                    auth="scope",
                ),
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": _responses(
                    {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}}
                ),
            }
        },
    },
}
