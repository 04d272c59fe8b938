"""The daemon's registry service with the real store and model: the watch's other triggers (failed
classifications, a stalled pipeline, a crash loop) and taking the registry over from a CLI command that
held it at start. (The uncertain-rate trigger and a model that no longer loads run through the whole
daemon in test_daemon_models.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from recyclex_edge.classifier import Classifier
from recyclex_edge.config import Config, load_config
from recyclex_edge.errors import RegistryError
from recyclex_edge.health import HealthRegistry, Status
from recyclex_edge.model_card import SHIPPED_MODEL, load_card
from recyclex_edge.registry.keys import load_signing_key
from recyclex_edge.registry.service import ModelRegistry, Switch
from recyclex_edge.registry.store import ModelStore
from tests.registry.support import bin_config, keypair, package_file


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    key, pub = keypair(tmp_path / "keys")
    config = load_config(bin_config(tmp_path, [pub]), environ={})
    store = ModelStore.for_config(config, {})
    from recyclex_edge.registry.package import read_package

    with store.writer("test"):
        for version in ("7.2.0", "7.3.0"):
            data = package_file(tmp_path, version, key).read_bytes()
            package = read_package(data, config.model.public_keys(), allow_unsigned=False)
            store.install(package, by="test", source=version, activate=version == "7.2.0")
    return config


class Stages:
    """What the daemon would switch: records the classifiers it is handed."""

    def __init__(self) -> None:
        self.used: list[str] = []
        self.errors = 0
        self.stalled = False

    def switch(self) -> Switch:
        def use(classifier: Classifier) -> None:
            self.used.append(classifier.card.version)

        return Switch(check=lambda classifier: None, use=use, use_shadow=lambda classifier: None)


def started(
    config: Config, stages: Stages, loop: asyncio.AbstractEventLoop, health: HealthRegistry
) -> ModelRegistry:
    registry = ModelRegistry(config, {}, health)
    assert registry.start() is not None
    registry.attach(
        stages.switch(), loop, pipeline_errors=lambda: stages.errors, pipeline_stalled=lambda: stages.stalled
    )
    return registry


@pytest.mark.parametrize("trigger", ["errors", "stall"])
def test_failed_classifications_or_a_stall_in_the_watch_roll_back(
    config: Config, loop: asyncio.AbstractEventLoop, trigger: str
) -> None:
    stages, health = Stages(), HealthRegistry()
    registry = started(config, stages, loop, health)
    registry.activate("7.3.0", who="test")
    registry.tick()
    assert registry.store.state().active == "7.3.0", "a quiet watch changes nothing"
    if trigger == "errors":
        stages.errors += config.model.watch.max_errors
    else:
        stages.stalled = True
    registry.tick()
    registry.close()
    assert registry.store.state().active == "7.2.0"
    assert stages.used == ["7.3.0", "7.2.0"]
    component = health.snapshot()["models"]
    assert component.status is Status.DEGRADED
    assert ("failed" if trigger == "errors" else "stalled") in component.detail


def test_a_crash_loop_in_the_watch_rolls_back_but_clean_restarts_do_not(
    config: Config, loop: asyncio.AbstractEventLoop
) -> None:
    registry = started(config, Stages(), loop, HealthRegistry())
    registry.activate("7.3.0", who="test")
    registry.close()
    for _ in range(5):  # a technician restarting the service: clean stops
        registry = ModelRegistry(config, {}, HealthRegistry())
        assert registry.start() is not None
        registry.close()
    assert registry.store.state().active == "7.3.0"
    crashes = config.model.watch.max_crashes
    for run in range(1, crashes + 2):
        health = HealthRegistry()
        registry = ModelRegistry(config, {}, health)
        classifier = registry.start()
        registry.store.release()  # then killed: no clean stop
        expected = "7.3.0" if run <= crashes else "7.2.0"
        assert classifier is not None and classifier.card.version == expected, run
    assert f"without a clean stop {crashes} times" in health.snapshot()["models"].detail


def test_a_registry_held_at_start_is_taken_over_and_its_changes_followed(
    config: Config, loop: asyncio.AbstractEventLoop
) -> None:
    cli = ModelStore.for_config(config, {})
    cli.acquire("cli:technician")
    stages = Stages()
    health = HealthRegistry()
    registry = started(config, stages, loop, health)
    assert not registry.writable and "in use by cli:technician" in health.snapshot()["models"].detail
    with pytest.raises(RegistryError, match="in use by cli:technician"):
        registry.rollback(who="test")
    cli.activate("7.3.0")  # the technician's command, while the daemon waits
    cli.release()
    registry.tick()
    assert registry.writable and stages.used == ["7.3.0"]
    assert health.snapshot()["models"].status is Status.OK
    registry.close()


def test_an_automatic_rollback_steps_over_a_predecessor_that_no_longer_loads(
    config: Config, loop: asyncio.AbstractEventLoop
) -> None:
    stages, health = Stages(), HealthRegistry()
    registry = started(config, stages, loop, health)
    registry.activate("7.3.0", who="test")
    (registry.store.versions_dir / "7.2.0" / "model.tflite").write_bytes(b"bit rot")
    with pytest.raises(RegistryError, match=r"version 7\.2\.0 does not load, so nothing was changed"):
        registry.rollback(who="test")  # asked for: refused
    assert registry.store.state().active == "7.3.0"
    stages.errors += config.model.watch.max_errors
    registry.tick()  # automatic: past 7.2.0 to the factory model
    registry.close()
    factory_version = load_card(SHIPPED_MODEL).version
    assert registry.store.state().active == "factory" and stages.used[-1] == factory_version
    assert "rolled back automatically from 7.3.0 to factory" in health.snapshot()["models"].detail


def test_labels_that_arrive_later_give_both_models_accuracy(
    tmp_path: Path, config: Config, loop: asyncio.AbstractEventLoop
) -> None:
    registry = started(config, Stages(), loop, HealthRegistry())
    key_path = tmp_path / "keys" / "fleet.key"
    data = package_file(tmp_path / "again", "7.3.0", load_signing_key(key_path)).read_bytes()
    assert "already installed" in registry.install(data, who="test", source="test", shadow=True)["detail"]

    def event_id(number: int) -> str:
        return f"01JDQ5V6W3M8R2Q4C6T8Y0ZB{number:02d}"

    def event(number: int, decision: str, shadow_decision: str) -> dict[str, object]:
        """The parts of a pipeline event the registry reads (schemas/event.schema.json)."""
        return {
            "id": event_id(number),
            "decision": decision,
            "model": {"name": "m", "version": "7.2.0"},
            "shadow": {
                "version": "7.3.0",
                "class": shadow_decision,
                "confidence": 0.9,
                "decision": shadow_decision,
            },
        }

    for number, (decision, shadow_decision) in enumerate(
        [("glass", "glass"), ("uncertain", "plastic"), ("metal", "paper"), ("paper", "paper")]
    ):
        registry.observe(event(number, decision, shadow_decision))
    truth = ["glass", "plastic", "metal", "cardboard"]
    assert all(registry.observe_label(event_id(n), label) for n, label in enumerate(truth))
    assert not registry.observe_label(event_id(99), "glass"), "not an item the shadow judged"
    assert not registry.observe_label(event_id(0), "glass"), "each item counts once"
    shadow = registry.summary()["shadow"]
    registry.close()
    assert shadow["items"] == 4 and shadow["agreement"] == 0.5 and shadow["labelled"] == 4
    assert shadow["active_accuracy"] == 0.5 and shadow["shadow_accuracy"] == 0.5
