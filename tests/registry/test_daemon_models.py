"""The running bin's models: install by HTTP and by MQTT (from a package server on loopback), refusals,
automatic rollback of a bad model, shadow runs and promotion. The real daemon, model, photos and broker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web

from recyclex_edge.config import Config
from recyclex_edge.daemon import Daemon
from recyclex_edge.model_card import SHIPPED_MODEL
from recyclex_edge.registry.keys import SigningKey
from recyclex_edge.registry.store import FACTORY, ModelStore
from tests.mqtt.support import Mosquitto, connect_collector, free_port
from tests.registry.support import keypair, package_file
from tests.test_daemon import bin_config, broker_settings, next_events, photo_folder, run_daemon  # noqa: F401
from tests.test_daemon_mqtt import command, wait_for

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "event.schema.json").read_text())
OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def signer(tmp_path: Path) -> tuple[SigningKey, str]:
    return keypair(tmp_path / "keys")


def model_bin(tmp_path: Path, pub: str, *overrides: str) -> Config:
    photos = photo_folder(tmp_path, ["paper", "glass", "metal", "cardboard"])
    return bin_config(tmp_path, photos, f'model.trusted_keys=["{pub}"]', *overrides)


def base_url(config: Config) -> str:
    return f"http://127.0.0.1:{config.http.port}"


async def models(session: aiohttp.ClientSession, config: Config) -> dict[str, Any]:
    async with session.get(f"{base_url(config)}/api/models") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def events_until(daemon: Daemon, version: str, timeout_s: float = 60) -> dict[str, Any]:
    """The first event classified by `version` (items in flight at the switch still carry the old one)."""
    async with asyncio.timeout(timeout_s):
        while True:
            (event,) = await next_events(daemon, 1, timeout_s)
            if event["model"]["version"] == version:
                return event


async def test_install_by_http_refuses_tampering_and_rolls_back(
    tmp_path: Path,
    signer: tuple[SigningKey, str],
    openapi_validator: Any,
    run_daemon: Any,  # noqa: F811
) -> None:
    key, pub = signer
    config = model_bin(tmp_path, pub)
    daemon: Daemon = await run_daemon(config)
    good = package_file(tmp_path, "7.2.0", key).read_bytes()
    tampered = bytearray(good)
    tampered[len(tampered) // 3] ^= 0x40
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url(config)}/api/models", data=bytes(tampered), headers=OCTETS) as r:
            body = await r.json()
            assert r.status == 400 and "changed after signing" in body["error"], body
            openapi_validator("/api/models", "POST", 400, body)
        assert (await models(session, config))["active"] == FACTORY

        async with session.post(f"{base_url(config)}/api/models", data=good, headers=OCTETS) as r:
            body = await r.json()
            assert r.status == 200 and body["version"] == "7.2.0", body
            openapi_validator("/api/models", "POST", 200, body)
        listed = await models(session, config)
        openapi_validator("/api/models", "GET", 200, listed)
        assert listed["active"] == "7.2.0" and listed["watch"]["version"] == "7.2.0"
        assert (await events_until(daemon, "7.2.0"))["model"]["version"] == "7.2.0"

        async with session.post(f"{base_url(config)}/api/models/rollback") as r:
            body = await r.json()
            assert r.status == 200 and body["version"] == FACTORY
            openapi_validator("/api/models/rollback", "POST", 200, body)
        async with session.delete(f"{base_url(config)}/api/models/{FACTORY}") as r:
            body = await r.json()
            assert r.status == 409 and "cannot be removed" in body["error"]
            openapi_validator("/api/models/{version}", "DELETE", 409, body)
        async with session.post(f"{base_url(config)}/api/models/9.9.9/activate") as r:
            assert r.status == 409 and "no model version '9.9.9'" in (await r.json())["error"]
        listed = await models(session, config)
    assert listed["active"] == FACTORY
    audit = [(a["who"], a["action"], a["ok"]) for a in reversed(listed["audit"])]
    assert audit == [
        ("http:127.0.0.1", "install", False),
        ("http:127.0.0.1", "install", True),
        ("http:127.0.0.1", "rollback", True),
        ("http:127.0.0.1", "remove", False),
        ("http:127.0.0.1", "activate", False),
    ]


@pytest.fixture
async def package_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A plain HTTP server on loopback serving the files of a folder: where a fleet keeps its packages."""
    folder = tmp_path / "served"
    folder.mkdir()
    app = web.Application()
    app.router.add_static("/", folder)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", folder
    await runner.cleanup()


async def test_install_by_mqtt_downloads_verifies_and_refuses(
    tmp_path: Path,
    signer: tuple[SigningKey, str],
    broker: Mosquitto,
    package_server: tuple[str, Path],
    run_daemon: Any,  # noqa: F811
) -> None:
    key, pub = signer
    url, served = package_server
    good = package_file(tmp_path, "7.2.0", key)
    shutil.copy(good, served / "good.rxm")
    data = bytearray(good.read_bytes())
    data[-10] ^= 0x01  # inside the signature
    (served / "tampered.rxm").write_bytes(bytes(data))
    sha = {
        name: hashlib.sha256((served / name).read_bytes()).hexdigest()
        for name in ("good.rxm", "tampered.rxm")
    }
    config = model_bin(tmp_path, pub, *broker_settings(broker.port, "bin-models"))
    prefix = "recyclex/bin-models"
    collector = connect_collector(broker, [f"{prefix}/#"], "fleet-manager", protocol="5")
    try:
        daemon: Daemon = await run_daemon(config)
        # Its first state comes after it subscribed to its commands: nothing sent from here on is lost.
        await wait_for(collector, f"{prefix}/state", 1)
        install = "install-model"
        answer = await command(
            collector, prefix, install, {"url": f"{url}/tampered.rxm", "sha256": sha["tampered.rxm"]}
        )
        assert answer["ok"] is False and "changed after signing" in answer["error"], answer
        answer = await command(
            collector, prefix, install, {"url": f"{url}/good.rxm", "sha256": sha["tampered.rxm"]}
        )
        assert answer["ok"] is False and "sha256" in answer["error"], answer
        answer = await command(
            collector, prefix, install, {"url": f"{url}/missing.rxm", "sha256": sha["good.rxm"]}
        )
        assert answer["ok"] is False and "HTTP 404" in answer["error"], answer
        assert daemon.registry is not None and daemon.registry.store.state().active == FACTORY

        answer = await command(
            collector,
            prefix,
            install,
            {"url": f"{url}/good.rxm", "sha256": sha["good.rxm"], "by": "fleet-manager"},
        )
        assert answer["ok"] is True and answer["result"]["version"] == "7.2.0", answer
        await events_until(daemon, "7.2.0")
        async with asyncio.timeout(30):
            while collector.on(f"{prefix}/state")[-1].json()["models"]["active"] != "7.2.0":
                await asyncio.sleep(0.1)

        answer = await command(collector, prefix, "rollback-model", {})
        assert answer["ok"] is True and answer["result"]["version"] == FACTORY, answer
    finally:
        collector.close()
    audit = daemon.registry.audit.recent()
    assert [(a["who"], a["ok"]) for a in reversed(audit)] == [
        ("mqtt", False),
        ("mqtt", False),
        ("mqtt", False),
        ("mqtt:fleet-manager", True),
        ("mqtt", True),
    ]


async def test_a_model_that_says_uncertain_to_everything_is_rolled_back(
    tmp_path: Path,
    signer: tuple[SigningKey, str],
    run_daemon: Any,  # noqa: F811
) -> None:
    key, pub = signer
    config = model_bin(tmp_path, pub, "model.watch.min_items=3")
    daemon: Daemon = await run_daemon(config)
    async with aiohttp.ClientSession() as session:
        for version, threshold in (("7.2.0", None), ("7.3.0-bad", 1.0)):
            data = package_file(tmp_path, version, key, threshold=threshold).read_bytes()
            async with session.post(f"{base_url(config)}/api/models", data=data, headers=OCTETS) as r:
                assert r.status == 200, await r.json()
        bad = [await events_until(daemon, "7.3.0-bad")]
        assert bad[0]["decision"] == "uncertain"
        await events_until(daemon, "7.2.0", timeout_s=90)  # rolled back without anyone's help
        listed = await models(session, config)
        async with session.get(f"{base_url(config)}/health") as r:
            health = await r.json()
    assert listed["active"] == "7.2.0" and listed["watch"] is None
    rollback = listed["last_rollback"]
    assert rollback["from_version"] == "7.3.0-bad" and rollback["to_version"] == "7.2.0"
    assert "uncertain on 100%" in rollback["reason"]
    assert health["components"]["models"]["status"] == "degraded"
    assert "rolled back automatically from 7.3.0-bad to 7.2.0" in health["components"]["models"]["detail"]
    assert listed["audit"][0]["who"] == "daemon" and listed["audit"][0]["action"] == "rollback"
    assert daemon.state()["models"]["last_rollback"]["to_version"] == "7.2.0"


async def test_a_version_that_no_longer_loads_is_rolled_back_at_start(
    tmp_path: Path,
    signer: tuple[SigningKey, str],
    run_daemon: Any,  # noqa: F811
) -> None:
    key, pub = signer
    config = model_bin(tmp_path, pub)
    store = ModelStore.for_config(config, {})
    from recyclex_edge.registry.package import read_package

    with store.writer("test"):
        for version in ("7.2.0", "7.3.0"):
            package = read_package(
                package_file(tmp_path, version, key).read_bytes(),
                config.model.public_keys(),
                allow_unsigned=False,
            )
            store.install(package, by="test", source=version, activate=True)
    (store.versions_dir / "7.3.0" / "model.tflite").write_bytes(b"bit rot")
    daemon: Daemon = await run_daemon(config)
    assert daemon.registry is not None and daemon.registry.store.state().active == "7.2.0"
    assert (await next_events(daemon, 1, timeout_s=60))[0]["model"]["version"] == "7.2.0"
    detail = daemon.health.snapshot()["models"].detail
    assert "from 7.3.0 to 7.2.0" in detail and "failed to load at start" in detail


async def test_a_shadow_candidate_judges_every_item_and_is_promoted_automatically(
    tmp_path: Path,
    signer: tuple[SigningKey, str],
    run_daemon: Any,  # noqa: F811
) -> None:
    key, pub = signer
    config = model_bin(tmp_path, pub, "model.promote.mode=auto", "model.promote.min_items=10")
    daemon: Daemon = await run_daemon(config)
    data = package_file(tmp_path, "7.2.0", key).read_bytes()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url(config)}/api/models?shadow=true", data=data, headers=OCTETS) as r:
            assert r.status == 200, await r.json()
        listed = await models(session, config)
        assert listed["active"] == FACTORY and [m["candidate"] for m in listed["models"]] == [False, True]
        shadowed = []
        reports: list[dict[str, Any] | None] = []
        async with asyncio.timeout(120):
            while True:
                (event,) = await next_events(daemon, 1, 60)
                if event["model"]["version"] == "7.2.0":
                    break  # promoted
                if "shadow" in event:
                    jsonschema.validate(event, SCHEMA)
                    shadowed.append(event)
                    reports.append(daemon.state()["models"]["shadow"])  # MQTT's retained state carries it
        listed = await models(session, config)
    assert len(shadowed) >= 9
    # None: promoted meanwhile; no items: the hub delivered the first event before the registry counted it.
    figures = [report for report in reports if report is not None and report["items"]]
    assert len(figures) >= 5 and all(report["agreement"] == 1.0 for report in figures), reports
    for event in shadowed:
        # The same weights: the candidate agrees; the flap followed the active model's decision.
        assert event["shadow"]["version"] == "7.2.0" and event["shadow"]["decision"] == event["decision"]
    assert listed["active"] == "7.2.0" and listed["shadow"] is None
    promotion = listed["audit"][0]
    assert promotion["who"] == "daemon" and promotion["action"] == "activate" and promotion["ok"]


async def test_an_encrypting_bin_installs_only_ciphertext_and_sorts_with_it(
    tmp_path: Path,
    signer: tuple[SigningKey, str],
    run_daemon: Any,  # noqa: F811
) -> None:
    key, pub = signer
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "model-key").write_text("a1" * 32)
    config = model_bin(tmp_path, pub, "model.encryption_key_credential=model-key")
    daemon: Daemon = await run_daemon(config, {"CREDENTIALS_DIRECTORY": str(credentials)})
    data = package_file(tmp_path, "7.2.0", key).read_bytes()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url(config)}/api/models", data=data, headers=OCTETS) as r,
    ):
        assert r.status == 200, await r.json()
    assert (await events_until(daemon, "7.2.0"))["model"]["version"] == "7.2.0"
    version = tmp_path / "state" / "models" / "versions" / "7.2.0"
    assert sorted(p.name for p in version.iterdir()) == ["meta.json", "model.json", "model.tflite.sealed"]
    assert SHIPPED_MODEL.read_bytes()[4096:4160] not in (version / "model.tflite.sealed").read_bytes()
