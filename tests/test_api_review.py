"""The Review API: list captured items, get a photo, label (and undo) behind the `label` scope; errors
are JSON; bodies match /openapi.json. Real shipped model, real photos, a real capture store on disk."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from recyclex_edge.api.keys import CONFIG
from recyclex_edge.api.review import add_review_api
from recyclex_edge.fieldlearning import FieldLearning
from tests.conftest import API_ADMIN_AUTH, API_AUTH
from tests.fieldlearning.test_adaptation import SITE

LABEL_TOKEN = "label-token-for-the-review-tests-5555555555"
LABEL_AUTH = {"Authorization": f"Bearer {LABEL_TOKEN}"}


def label_token_override() -> str:
    digest = hashlib.sha256(LABEL_TOKEN.encode()).hexdigest()
    predict = hashlib.sha256(b"predict-token-for-the-api-tests-0123456789").hexdigest()
    admin = hashlib.sha256(b"admin-token-for-the-api-tests-9876543210").hexdigest()
    return (
        f"http.auth.tokens=[{{name: tester, sha256: {predict}, scopes: [predict]}},"
        f" {{name: operator, sha256: {admin}, scopes: [admin]}},"
        f" {{name: reviewer, sha256: {digest}, scopes: [label]}}]"
    )


@pytest.fixture
async def review(api_client, shipped_classifier):
    """A client on an app with the Review API, and the FieldLearning behind it with 6 imported items."""
    sites: list[FieldLearning] = []

    def customise(app: Any) -> None:
        config = app[CONFIG]
        site = FieldLearning(config.capture, config.decision, config.storage.state_dir)
        site.use_classifier(shipped_classifier)
        for label in ("glass", "metal", "plastic"):
            for photo in sorted((SITE / label).glob("*.jpg"))[:2]:
                site.import_photo(photo, label, by="import")
        for item in site.labelled_items()[:3]:
            site.set_label(item.event_id, None, by="test")  # three left to review
        add_review_api(app, site)
        sites.append(site)

    client = await api_client(label_token_override(), customise=customise)
    yield client, sites[0]
    sites[0].close()


async def test_list_filters_and_counts(review, openapi_validator) -> None:
    client, _site = review
    response = await client.get("/api/captures", headers=LABEL_AUTH)
    body = await response.json()
    assert response.status == 200, body
    openapi_validator("/api/captures", "get", 200, body)
    assert len(body["items"]) == 6 and body["backlog"] == 3 and body["labelled"] == 3
    ids = [item["id"] for item in body["items"]]
    assert ids == sorted(ids, reverse=True), "newest first"
    assert body["labels"] == ["cardboard", "glass", "metal", "paper", "plastic", "trash", "none"]
    unlabelled = await (await client.get("/api/captures?labelled=false", headers=LABEL_AUTH)).json()
    assert {i["label"] for i in unlabelled["items"]} == {None} and len(unlabelled["items"]) == 3
    page = await (await client.get(f"/api/captures?limit=2&before={ids[1]}", headers=LABEL_AUTH)).json()
    assert [i["id"] for i in page["items"]] == ids[2:4]


async def test_image_and_label_and_undo(review, openapi_validator) -> None:
    client, site = review
    item = (await (await client.get("/api/captures?labelled=false", headers=LABEL_AUTH)).json())["items"][0]
    image = await client.get(f"/api/captures/{item['id']}/image.jpg", headers=LABEL_AUTH)
    assert image.status == 200 and image.content_type == "image/jpeg"
    assert (await image.read()) == site.store.image(item["id"])

    labelled = await client.put(
        f"/api/captures/{item['id']}/label", json={"label": "none"}, headers=LABEL_AUTH
    )
    body = await labelled.json()
    assert labelled.status == 200, body
    openapi_validator("/api/captures/{event_id}/label", "put", 200, body)
    assert body["label"] == "none" and body["labelled_by"] == "token:reviewer"
    undone = await client.put(
        f"/api/captures/{item['id']}/label", json={"label": None}, headers=API_ADMIN_AUTH
    )
    assert (await undone.json())["label"] is None, "admin may label too; null takes it back"
    assert site.store.get(item["id"]).label is None


@pytest.mark.parametrize(
    ("path", "method", "body", "headers", "status", "words"),
    [
        ("/api/captures", "get", None, {}, 401, "token"),
        ("/api/captures", "get", None, API_AUTH, 403, "'label' scope"),
        ("/api/captures?labelled=maybe", "get", None, LABEL_AUTH, 400, "labelled must be"),
        ("/api/captures?limit=0", "get", None, LABEL_AUTH, 400, "limit must be"),
        ("/api/captures?labelled=true&labelled=false", "get", None, LABEL_AUTH, 400, "give labelled once"),
        ("/api/captures?before=a&before=b", "get", None, LABEL_AUTH, 400, "give before once"),
        ("/api/captures/01NOSUCH/image.jpg", "get", None, LABEL_AUTH, 404, "no captured item"),
        ("/api/captures/01NOSUCH/label", "put", {"label": "glass"}, LABEL_AUTH, 404, "no captured item"),
        (
            "/api/captures/{id}/label",
            "put",
            {"label": "bottle"},
            LABEL_AUTH,
            400,
            "expected one of: cardboard",
        ),
        ("/api/captures/{id}/label", "put", {"lable": "glass"}, LABEL_AUTH, 400, "exactly"),
        ("/api/captures/{id}/label", "put", {"label": 3}, LABEL_AUTH, 400, "non-empty string"),
    ],
)
async def test_refusals_are_json_errors(
    review, openapi_validator, path, method, body, headers, status, words
) -> None:
    client, site = review
    path = path.replace("{id}", site.labelled_items()[0].event_id)
    response = await client.request(method, path, json=body, headers=headers)
    answer = await response.json()
    assert response.status == status, answer
    assert set(answer) == {"error", "code", "timestamp"} and words in answer["error"]


async def test_a_label_without_json_content_type_is_refused(review) -> None:
    client, site = review
    item_id = site.labelled_items()[0].event_id
    response = await client.put(f"/api/captures/{item_id}/label", data=b"glass", headers=LABEL_AUTH)
    assert response.status == 415 and "application/json" in (await response.json())["error"]
