"""Shared fixtures: the real shipped model and real TrashNet photos (never mocks of either)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recyclex_edge.classifier import Classifier
from recyclex_edge.model_card import SHIPPED_MODEL


def _shared() -> Path:
    """`../shared` beside the checkout; from a copy inside it (mutmut's `mutants/`), the nearest above."""
    for folder in Path(__file__).resolve().parents[1:]:
        if (folder.parent / "shared" / "datasets").is_dir():
            return folder.parent / "shared"
    return Path(__file__).resolve().parents[1].parent / "shared"


DATASET = _shared() / "datasets" / "trashnet"
VAL = DATASET / "val"
# Photos from another source (glass, metal, plastic): how the model holds up off TrashNet's board.
DEV = DATASET.parent / "drinking-waste-dev"


def val_photos(label: str | None = None) -> list[Path]:
    """Real validation photos, sorted, for one label or all."""
    folders = [VAL / label] if label else sorted(p for p in VAL.iterdir() if p.is_dir())
    return sorted(photo for folder in folders for photo in folder.glob("*.jpg"))


def dev_photos(part: str) -> list[tuple[str, Path]]:
    """(label, photo) of one fixed half of the dev set: "heldout" or "tune", split as tools/train/data.py
    does (sha1 of the file name), so the card's figures for each half can be checked."""
    photos = []
    for folder in sorted(p for p in DEV.iterdir() if p.is_dir()):
        for photo in sorted(folder.iterdir()):
            digest = hashlib.sha1(photo.name.encode()).hexdigest()
            if ("heldout" if int(digest[:8], 16) % 2 == 0 else "tune") == part:
                photos.append((folder.name, photo))
    return photos


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Any]:
    """A real Mosquitto on a free loopback port, stoppable and restartable (tests/mqtt/support.py)."""
    from tests.mqtt.support import Mosquitto

    server = Mosquitto(tmp_path / "broker")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dataset_val() -> Path:
    if not VAL.is_dir():
        pytest.fail(f"TrashNet val split not found at {VAL}; the tests need ../shared/datasets/trashnet")
    return VAL


@pytest.fixture(scope="session")
def shipped_classifier() -> Classifier:
    """The real shipped model, loaded once for the session."""
    assert SHIPPED_MODEL.is_file(), f"shipped model missing: {SHIPPED_MODEL}"
    return Classifier(num_threads=1, pool_size=2)


# --- HTTP API (tests/test_api_*.py); imports kept local so this section only appends -------------

API_PREDICT_TOKEN = "predict-token-for-the-api-tests-0123456789"
API_ADMIN_TOKEN = "admin-token-for-the-api-tests-9876543210"
API_AUTH = {"Authorization": f"Bearer {API_PREDICT_TOKEN}"}
API_ADMIN_AUTH = {"Authorization": f"Bearer {API_ADMIN_TOKEN}"}


def _api_token_overrides() -> list[str]:
    import hashlib

    predict = hashlib.sha256(API_PREDICT_TOKEN.encode()).hexdigest()
    admin = hashlib.sha256(API_ADMIN_TOKEN.encode()).hexdigest()
    # The same --set syntax an operator would use.
    return [
        f"http.auth.tokens=[{{name: tester, sha256: {predict}, scopes: [predict]}},"
        f" {{name: operator, sha256: {admin}, scopes: [admin]}}]"
    ]


@pytest.fixture
def api_config(tmp_path: Path):
    """Config factory: auth on with two static tokens (predict, admin), state in tmp_path, rate limit
    off unless a test turns it on; extra `--set` style overrides win."""
    from recyclex_edge.config import Config, load_config

    def make(*overrides: str) -> Config:
        base = [f"storage.state_dir={tmp_path / 'state'}", "http.rate_limit.enabled=false"]
        return load_config(None, [*base, *_api_token_overrides(), *overrides], environ={})

    return make


@pytest.fixture
def api_client(aiohttp_client, api_config, request):
    """Client factory for an app built as the daemon builds it, on the real shipped model.

    `classifier=None` builds the 'model failed to load' app; `health` passes a registry to share."""
    from aiohttp.test_utils import TestServer

    from recyclex_edge.api import ACCESS_LOG, AccessLogger, build_app
    from recyclex_edge.health import HealthRegistry

    async def make(*overrides, classifier=..., health=None, customise=None):
        chosen = request.getfixturevalue("shipped_classifier") if classifier is ... else classifier
        app = build_app(api_config(*overrides), chosen, health or HealthRegistry())
        if customise is not None:  # e.g. add the technician page, as Daemon.serve does
            customise(app)
        # Runner options as the daemon passes them (TestServer ignores its constructor's kwargs).
        server = TestServer(app)
        await server.start_server(access_log_class=AccessLogger, access_log=ACCESS_LOG)
        return await aiohttp_client(server)

    return make


@pytest.fixture(scope="session")
def openapi_validator():
    """Checks one real JSON body against /openapi.json's schema for that path, method and status."""
    import jsonschema

    from recyclex_edge.api.openapi import OPENAPI

    def check(path: str, method: str, status: int, body: object) -> None:
        responses = OPENAPI["paths"][path][method.lower()]["responses"]
        key = str(status)
        assert key in responses, f"{method} {path} answered {status}, which /openapi.json does not list"
        pointer = f"#/paths/{path.replace('/', '~1')}/{method.lower()}/responses/{key}"
        schema = {**OPENAPI, "$ref": f"{pointer}/content/application~1json/schema"}
        jsonschema.validate(body, schema, format_checker=jsonschema.FormatChecker())

    return check
