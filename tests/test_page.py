"""The technician page's API: the page and its assets, /api/state, /api/history, thumbnails, the camera view
and commands, behind the API's own authentication, scopes and JSON errors. Also the History it reads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from recyclex_edge.api import ACCESS_LOG, AccessLogger, build_app
from recyclex_edge.api.page import add_technician_page, camera_jpeg
from recyclex_edge.errors import RecycleXError
from recyclex_edge.health import HealthRegistry
from recyclex_edge.history import History
from recyclex_edge.ids import new_event_id
from tests.conftest import API_ADMIN_AUTH, API_AUTH, val_photos

BAD_AUTH = {"Authorization": "Bearer not-a-token-this-bin-knows-0000000000"}
PHOTO = cv2.imread(str(val_photos("glass")[0]))


def make_event(label: str = "glass", confidence: float = 0.97, inference_ms: float = 60.0) -> dict[str, Any]:
    return {
        "schema": 1,
        "id": new_event_id(),
        "ts": "2026-11-26T11:00:00.000+00:00",
        "device": "bin-001",
        "class": label,
        "confidence": confidence,
        "probabilities": {label: confidence},
        "decision": label,
        "action": f"sorted:{label}",
        "model": {"name": "m", "version": "1"},
        "timing": {"frames": 3, "inference_ms": inference_ms, "settled_to_decided_ms": 90.0},
    }


class FakeClock:
    def __init__(self, now_s: float = 1_800_000_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


class Bin:
    """What the daemon hands to add_technician_page, recording what the page asks of it."""

    def __init__(self) -> None:
        self.history = History(max_events=5, window_minutes=60)
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        self.snapshots = 0
        self.frame: np.ndarray | None = PHOTO
        self.release = threading.Event()
        self.release.set()

    def handler(self, name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def handle(arguments: dict[str, Any]) -> dict[str, Any]:
            self.calls.append((name, arguments, threading.current_thread().name))
            self.release.wait(10)
            if arguments.get("category") == "ewaste":
                raise RecycleXError("no bin 'ewaste'; expected one of: glass, trash")
            return {"done": name, **arguments}

        return handle

    def state(self) -> dict[str, Any]:
        return {
            "mode": "sort",
            "counters": {"glass": 2},
            "bins": {"glass": 2},
            "fill_levels": {"glass": 40.0},
        }

    def snapshot(self) -> bytes | None:
        self.snapshots += 1
        if self.frame is None:
            return None
        return bytes(cv2.imencode(".jpg", self.frame)[1])


@pytest.fixture
def page_client(aiohttp_client: Any, api_config: Any) -> Callable[..., Any]:
    """A client for the API as build_app makes it plus the technician page, on a recording Bin."""

    async def make(*overrides: str, bin_: Bin | None = None) -> tuple[TestClient[Any, Any], Bin]:
        fake = bin_ or Bin()
        app = build_app(api_config(*overrides), None, HealthRegistry())
        names = ["mode", "test-actuator", "reload-model", "reset-counters", "snapshot"]
        add_technician_page(
            app,
            history=fake.history,
            commands={name: fake.handler(name) for name in names},
            state=fake.state,
            camera_snapshot=fake.snapshot,
            detector_state=lambda: "settled",
        )
        server = TestServer(app)
        await server.start_server(access_log_class=AccessLogger, access_log=ACCESS_LOG)
        client: TestClient[Any, Any] = await aiohttp_client(server)
        return client, fake

    return make


def assert_json_error(body: Any, status: int, words: str) -> None:
    assert set(body) == {"error", "code", "timestamp"} and body["code"] == status, body
    assert words in body["error"], body


# -- the page itself ----------------------------------------------------------------------------------


async def test_the_page_and_its_assets_are_public_and_hold_no_data(page_client: Any) -> None:
    client, _ = await page_client()
    page = await client.get("/")
    html = await page.text()
    assert page.status == 200 and page.content_type == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"], "no script from elsewhere runs"
    assert '<script src="/static/app.js"' in html and "http" not in html.replace("http-equiv", ""), (
        "no CDN: the page loads nothing from outside the bin"
    )
    script = await client.get("/static/app.js")
    style = await client.get("/static/style.css")
    assert script.status == 200 and script.content_type == "text/javascript"
    assert style.status == 200 and style.content_type == "text/css"
    missing = await client.get("/static/../daemon.py")
    assert missing.status == 404
    missing = await client.get("/static/secret.txt")
    assert_json_error(await missing.json(), 404, "no such file")


# -- /api/state ---------------------------------------------------------------------------------------


async def test_state_says_mode_counters_detector_device_and_who_is_calling(page_client: Any) -> None:
    client, _ = await page_client("device.id=bin-page", "device.name=Hall 3 east")
    anonymous = await (await client.get("/api/state")).json()
    assert anonymous["mode"] == "sort" and anonymous["counters"] == {"glass": 2}
    assert anonymous["fill_levels"] == {"glass": 40.0} and anonymous["detector"] == "settled"
    assert anonymous["device"] == {"id": "bin-page", "name": "Hall 3 east", "location": ""}
    assert "test-actuator" in anonymous["commands"] and "pass-through" in anonymous["modes"]
    assert anonymous["categories"], "the page needs the bins to offer an actuator test for each"
    assert anonymous["auth"] == {
        "enabled": True,
        "subject": None,
        "scopes": [],
        "admin": False,
        "problem": None,
    }

    admin = (await (await client.get("/api/state", headers=API_ADMIN_AUTH)).json())["auth"]
    assert admin["subject"] == "token:operator" and admin["admin"] is True
    predict = (await (await client.get("/api/state", headers=API_AUTH)).json())["auth"]
    assert predict["subject"] == "token:tester" and predict["admin"] is False
    refused = (await (await client.get("/api/state", headers=BAD_AUTH)).json())["auth"]
    assert refused["subject"] is None and refused["problem"] == "the token is not valid"


async def test_state_and_history_need_a_token_when_health_does(page_client: Any) -> None:
    client, _ = await page_client("http.auth.public_health=false")
    for path in ("/api/state", "/api/history"):
        response = await client.get(path)
        assert response.status == 401 and "Bearer" in response.headers["WWW-Authenticate"]
        assert_json_error(await response.json(), 401, "Authorization: Bearer")
        assert (await client.get(path, headers=API_AUTH)).status == 200


async def test_with_auth_off_the_page_is_told_so(page_client: Any) -> None:
    client, _ = await page_client("http.auth.enabled=false")
    auth = (await (await client.get("/api/state")).json())["auth"]
    assert auth["enabled"] is False and auth["admin"] is True


# -- /api/history and thumbnails ----------------------------------------------------------------------


async def test_history_lists_recent_events_newest_first_with_thumbnails_behind_a_token(
    page_client: Any,
) -> None:
    client, fake = await page_client()
    events = [make_event("glass"), make_event("paper", 0.5), make_event("metal")]
    for event in events:
        fake.history.record(event, PHOTO)
    fake.history.record(make_event("trash"), None)  # an event without a frame still lists

    body = await (await client.get("/api/history")).json()
    listed = body["events"]
    assert [e["class"] for e in listed] == ["trash", "metal", "paper", "glass"]
    assert [e["thumbnail"] for e in listed] == [False, True, True, True]
    assert listed[1]["id"] == events[2]["id"] and listed[2]["confidence"] == 0.5
    assert "probabilities" not in listed[0] and listed[0]["inference_ms"] == 20.0, "per frame, no image"
    assert body["series"]["items"][-1] == 4 and body["series"]["by_class"]["glass"][-1] == 1

    path = f"/api/events/{events[0]['id']}/thumbnail.jpg"
    refused = await client.get(path)
    assert_json_error(await refused.json(), 401, "Bearer")
    thumbnail = await client.get(path, headers=API_AUTH)
    assert thumbnail.status == 200 and thumbnail.content_type == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(await thumbnail.read(), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] == 96, "a small thumbnail, not the frame"
    gone = await client.get("/api/events/01NOSUCHEVENT/thumbnail.jpg", headers=API_AUTH)
    assert_json_error(await gone.json(), 404, "only the last 5 events")


def test_history_is_bounded_and_buckets_by_minute() -> None:
    clock = FakeClock()
    history = History(max_events=3, window_minutes=10, clock=clock)
    recorded = []
    for minute, label in enumerate(["glass", "glass", "metal", "paper", "paper"]):
        event = make_event(label, inference_ms=30.0 * (minute + 1))
        recorded.append(event)
        history.record(event, PHOTO)
        clock.now_s += 60 if minute < 3 else 0  # the last two items share a minute
    assert [e["id"] for e in history.events()] == [e["id"] for e in reversed(recorded[-3:])]
    assert history.thumbnail(recorded[0]["id"]) is None, "a thumbnail leaves with its event"
    assert history.thumbnail(recorded[-1]["id"]) is not None

    series = history.series()
    assert len(series["items"]) == 10 and series["bucket_s"] == 60
    assert series["items"][-4:] == [1, 1, 1, 2]
    assert series["by_class"]["paper"][-1] == 2 and series["by_class"]["glass"][-4:] == [1, 1, 0, 0]
    assert series["inference_ms"][-1] == (40.0 + 50.0) / 2, "the mean per frame of that minute's items"
    assert series["inference_ms"][0] is None

    clock.now_s += 60 * 20  # long after: the old minutes are forgotten, the events stay
    later = history.series()
    assert sum(later["items"]) == 0 and later["by_class"] == {} and len(history.events()) == 3

    history.record(make_event("metal"), None)
    clock.now_s -= 3600 * 24 * 365  # the clock steps back a year (NTP on a Pi without a clock)
    history.record(make_event("glass"), None)
    stepped = history.series()
    assert stepped["items"][-1] == 1 and stepped["by_class"] == {"glass": stepped["items"]}


# -- the camera view ----------------------------------------------------------------------------------


async def test_the_camera_view_is_a_jpeg_encoded_at_most_once_a_second(page_client: Any) -> None:
    client, fake = await page_client()
    assert (await client.get("/api/camera.jpg")).status == 401
    first = await client.get("/api/camera.jpg", headers=API_AUTH)
    second = await client.get("/api/camera.jpg", headers=API_AUTH)
    assert first.status == second.status == 200 and first.content_type == "image/jpeg"
    assert await first.read() == await second.read() and fake.snapshots == 1, "shared, not re-encoded"


async def test_no_camera_frame_is_a_json_503(page_client: Any) -> None:
    fake = Bin()
    fake.frame = None
    client, _ = await page_client(bin_=fake)
    response = await client.get("/api/camera.jpg", headers=API_AUTH)
    assert response.status == 503 and response.headers["Retry-After"] == "2"
    assert_json_error(await response.json(), 503, "no camera frame yet")


def test_camera_jpeg_scales_the_latest_frame() -> None:
    class Latest:
        image = PHOTO

    class FakeCamera:
        def latest(self) -> Any:
            return Latest()

    jpeg = camera_jpeg(FakeCamera(), width_px=320)()  # type: ignore[arg-type]
    assert jpeg is not None
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[1] == 320
    assert camera_jpeg(None)() is None


# -- commands -----------------------------------------------------------------------------------------


async def test_commands_need_the_admin_scope(page_client: Any) -> None:
    client, fake = await page_client()
    body = {"category": "glass"}
    missing = await client.post("/api/commands/test-actuator", json=body)
    assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert_json_error(await missing.json(), 401, "Authorization: Bearer")
    refused = await client.post("/api/commands/test-actuator", json=body, headers=BAD_AUTH)
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    assert_json_error(await refused.json(), 401, "not valid")
    predict_only = await client.post("/api/commands/test-actuator", json=body, headers=API_AUTH)
    assert_json_error(await predict_only.json(), 403, "'admin' scope")
    assert fake.calls == [], "no refused call reached the bin"

    allowed = await client.post("/api/commands/test-actuator", json=body, headers=API_ADMIN_AUTH)
    assert allowed.status == 200
    assert await allowed.json() == {
        "ok": True,
        "command": "test-actuator",
        "result": {"done": "test-actuator", "category": "glass"},
    }
    ((name, arguments, thread),) = fake.calls
    assert (name, arguments) == ("test-actuator", {"category": "glass"})
    assert thread != threading.main_thread().name, "run off the event loop"


async def test_with_auth_off_commands_run_without_a_token(page_client: Any) -> None:
    client, fake = await page_client("http.auth.enabled=false")
    response = await client.post("/api/commands/mode", json={"mode": "maintenance"})
    assert response.status == 200 and (await response.json())["result"]["mode"] == "maintenance"
    json_type = {"Content-Type": "application/json"}
    snapshot = await client.post("/api/commands/snapshot", data=b"", headers=json_type)  # no arguments
    assert snapshot.status == 200 and [c[0] for c in fake.calls] == ["mode", "snapshot"]


async def test_a_command_must_be_json_so_another_site_cannot_post_one(page_client: Any) -> None:
    client, fake = await page_client("http.auth.enabled=false")
    # What a form or a no-cors fetch on some other web page could send without a CORS preflight.
    for headers in (
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {},
    ):
        response = await client.post("/api/commands/snapshot", data=b"{}", headers=headers)
        assert_json_error(await response.json(), 415, "Content-Type: application/json")
    assert fake.calls == []


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/api/commands/self-destruct", {}, 404, "no command 'self-destruct'; this bin accepts: mode"),
        ("/api/commands/mode", {"mode": "turbo"}, 400, "mode must be one of sort, pass-through"),
        ("/api/commands/mode", {}, 400, "'mode' needs 'mode'"),
        ("/api/commands/test-actuator", {"category": ""}, 400, "category must be a non-empty str"),
        ("/api/commands/snapshot", {"path": "/etc"}, 400, "unknown argument(s) path"),
        ("/api/commands/snapshot", [1, 2], 400, "must be a JSON object"),
        ("/api/commands/test-actuator", {"category": "ewaste"}, 409, "test-actuator failed: no bin 'ewaste'"),
    ],
)
async def test_bad_commands_are_refused_with_json_errors(
    page_client: Any, path: str, body: Any, status: int, words: str
) -> None:
    client, _ = await page_client()
    response = await client.post(path, json=body, headers=API_ADMIN_AUTH)
    assert response.status == status
    assert_json_error(await response.json(), status, words)


async def test_a_body_that_is_not_json_or_too_big_is_refused(page_client: Any) -> None:
    client, fake = await page_client()
    headers = {**API_ADMIN_AUTH, "Content-Type": "application/json"}
    broken = await client.post("/api/commands/mode", data=b"{mode: sort", headers=headers)
    assert_json_error(await broken.json(), 400, "not valid JSON")
    huge = await client.post("/api/commands/mode", data=b" " * 20_000, headers=headers)
    assert_json_error(await huge.json(), 413, "at most 16384 bytes")
    assert fake.calls == []


async def test_one_command_at_a_time(page_client: Any) -> None:
    import asyncio

    client, fake = await page_client()
    fake.release.clear()
    first = asyncio.create_task(
        client.post("/api/commands/test-actuator", json={"category": "glass"}, headers=API_ADMIN_AUTH)
    )
    async with asyncio.timeout(10):
        while not fake.calls:
            await asyncio.sleep(0.01)
    second = await client.post("/api/commands/reload-model", json={}, headers=API_ADMIN_AUTH)
    assert_json_error(await second.json(), 409, "another command is still running")
    fake.release.set()
    assert (await first).status == 200
    third = await client.post("/api/commands/reload-model", json={}, headers=API_ADMIN_AUTH)
    assert third.status == 200, "the runner is free again once the first command finished"


async def test_a_successful_command_tells_the_bin_its_state_changed(
    aiohttp_client: Any, api_config: Any
) -> None:
    fake = Bin()
    changed: list[str] = []
    app = build_app(api_config("http.auth.enabled=false"), None, HealthRegistry())
    add_technician_page(
        app,
        history=fake.history,
        commands={"test-actuator": fake.handler("test-actuator")},
        state=fake.state,
        camera_snapshot=fake.snapshot,
        detector_state=lambda: "empty",
        after_command=lambda: changed.append("state"),
    )
    client = await aiohttp_client(app)
    assert (await client.post("/api/commands/test-actuator", json={"category": "glass"})).status == 200
    assert (await client.post("/api/commands/test-actuator", json={"category": "ewaste"})).status == 409
    assert changed == ["state"], "only after the command that succeeded (MQTT re-publishes its state)"
