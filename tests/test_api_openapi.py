"""GET /openapi.json: a valid OpenAPI 3.1 document that covers every route. (Real responses are checked
against it in each endpoint's tests through the `openapi_validator` fixture.)"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from recyclex_edge.api.keys import CONFIG
from recyclex_edge.api.models import add_model_routes
from recyclex_edge.api.openapi import OPENAPI
from recyclex_edge.api.page import add_technician_page
from recyclex_edge.api.review import add_review_api
from recyclex_edge.fieldlearning import FieldLearning
from recyclex_edge.health import HealthRegistry
from recyclex_edge.history import History
from recyclex_edge.registry.service import ModelRegistry


async def test_the_document_is_served_and_covers_every_route(api_client) -> None:
    """The daemon's app: build_app's routes plus the page's and the models' (as Daemon.serve adds them)."""

    def with_page(app: Any) -> None:
        add_technician_page(
            app,
            history=History(),
            commands={},
            state=dict,
            camera_snapshot=lambda: None,
            detector_state=lambda: "off",
        )
        add_model_routes(app, ModelRegistry(app[CONFIG], {}, HealthRegistry()))
        config = app[CONFIG]
        add_review_api(app, FieldLearning(config.capture, config.decision, config.storage.state_dir))

    client = await api_client(classifier=None, customise=with_page)
    response = await client.get("/openapi.json")
    document = await response.json()
    assert response.status == 200 and document == OPENAPI and document["openapi"].startswith("3.1")
    routes = {resource.canonical for resource in client.app.router.resources()}
    assert routes == set(document["paths"]), "every route is documented and every documented path exists"


def test_every_schema_is_valid_json_schema() -> None:
    for schema in OPENAPI["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
