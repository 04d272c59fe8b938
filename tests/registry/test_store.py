"""The versions on the bin: install, activate, rollback, keep, remove, one writer, and kill -9 safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from recyclex_edge.classifier import Classifier
from recyclex_edge.config import load_config
from recyclex_edge.errors import RegistryError
from recyclex_edge.registry.keys import parse_public_key
from recyclex_edge.registry.package import read_package
from recyclex_edge.registry.store import FACTORY, ModelStore
from tests.registry.support import bin_config, keypair, package_file

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bin_(tmp_path: Path) -> tuple[Path, ModelStore, list[Path]]:
    """A bin's config and store, and packages of versions 7.2.0, 7.3.0 and 7.4.0 signed by a trusted key."""
    key, pub = keypair(tmp_path / "keys")
    packages = [package_file(tmp_path, version, key) for version in ("7.2.0", "7.3.0", "7.4.0")]
    config_path = bin_config(tmp_path, [pub], keep=2)
    return config_path, ModelStore.for_config(load_config(config_path, environ={}), {}), packages


def install(store: ModelStore, path: Path, *, activate: bool = True, shadow: bool = False) -> None:
    keys = [parse_public_key(text) for text in load_config_keys(store)]
    package = read_package(path.read_bytes(), keys, allow_unsigned=False)
    with store.writer("test"):
        store.install(package, by="test", source=str(path), activate=activate, shadow=shadow)


def load_config_keys(store: ModelStore) -> list[str]:
    config = load_config(store.root.parent.parent / "bin.yaml", environ={})
    return config.model.trusted_keys


def test_a_fresh_bin_runs_the_factory_model(bin_: tuple[Path, ModelStore, list[Path]]) -> None:
    _, store, _ = bin_
    (entry,) = store.entries()
    assert entry.version == FACTORY and entry.active
    assert Classifier(entry.model_path).card.version == entry.card.version


def test_install_activates_and_rollback_goes_back(bin_: tuple[Path, ModelStore, list[Path]]) -> None:
    _, store, (two, three, _) = bin_
    install(store, two)
    install(store, three)
    assert store.active().version == "7.3.0"
    assert Classifier(store.active().model_path).card.version == "7.3.0"
    with store.writer("test"):
        assert store.rollback() == ("7.3.0", "7.2.0")
        assert store.rollback() == ("7.2.0", FACTORY)
        with pytest.raises(RegistryError, match="no earlier model"):
            store.rollback()
        store.activate("7.3.0")
    assert store.active().version == "7.3.0"
    assert store.problems() == []


def test_keep_prunes_the_oldest_but_never_the_rollback_target(
    bin_: tuple[Path, ModelStore, list[Path]],
) -> None:
    _, store, packages = bin_
    for package in packages:
        install(store, package)
    assert store.versions() == ["7.3.0", "7.4.0"]  # keep: 2
    with store.writer("test"):
        assert store.rollback() == ("7.4.0", "7.3.0")


def test_shadow_install_leaves_the_active_model(bin_: tuple[Path, ModelStore, list[Path]]) -> None:
    _, store, (two, three, _) = bin_
    install(store, two)
    install(store, three, shadow=True)
    entries = {entry.version: entry for entry in store.entries()}
    assert entries["7.2.0"].active and entries["7.3.0"].candidate and not entries["7.3.0"].active


def test_remove_refuses_the_active_and_the_factory_model(bin_: tuple[Path, ModelStore, list[Path]]) -> None:
    _, store, (two, three, _) = bin_
    install(store, two)
    install(store, three)
    with store.writer("test"):
        for version, reason in (("7.3.0", "is active"), (FACTORY, "cannot be removed"), ("9", "no model")):
            with pytest.raises(RegistryError, match=reason):
                store.remove(version)
        store.remove("7.2.0")
    assert store.versions() == ["7.3.0"] and store.problems() == []


def test_same_version_with_other_contents_is_refused(tmp_path: Path) -> None:
    key, pub = keypair(tmp_path / "keys")
    store = ModelStore.for_config(load_config(bin_config(tmp_path, [pub]), environ={}), {})
    first = package_file(tmp_path / "a", "7.2.0", key)
    second = package_file(tmp_path / "b", "7.2.0", key, threshold=0.99)
    install(store, first)
    with pytest.raises(RegistryError, match="already installed with different contents"):
        install(store, second)


def test_there_is_only_one_writer(bin_: tuple[Path, ModelStore, list[Path]]) -> None:
    config_path, store, _ = bin_
    other = ModelStore.for_config(load_config(config_path, environ={}), {})
    with store.writer("daemon"), pytest.raises(RegistryError, match=r"in use by daemon.*POST /api/models"):
        other.acquire("cli")


def _kill_at(config_path: Path, package: Path, step: str) -> list[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.registry.install_process", str(config_path), str(package), step],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    seen = []
    try:
        for line in process.stdout:
            seen.append(line.strip())
            if line.strip() in (f"at {step}", "done"):
                break
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert seen[-1] == f"at {step}", f"the install never reached {step}: {seen}"
    return seen


@pytest.mark.parametrize(
    ("step", "active_after"),
    [
        ("writing-model", "7.2.0"),  # half the model written
        ("staged", "7.2.0"),  # all files written, not yet in place
        ("version-placed", "7.2.0"),  # in place, not yet active
        ("state-staged", "7.2.0"),  # the new pointer written beside the old one
        ("state-replaced", "7.3.0"),  # the pointer switched
    ],
)
def test_kill_9_during_an_install_leaves_a_working_consistent_store(
    bin_: tuple[Path, ModelStore, list[Path]], step: str, active_after: str
) -> None:
    config_path, store, (two, three, _) = bin_
    install(store, two)

    _kill_at(config_path, three, step)

    assert store.problems() == []
    active = store.active()
    assert active.version == active_after
    assert Classifier(active.model_path).card.version == active_after  # it really loads
    # The next writer clears what the killed one left half-done, and the install then succeeds.
    install(store, three)
    assert store.active().version == "7.3.0" and store.problems() == []
    assert not store.staging_dir.exists() or not any(store.staging_dir.iterdir())
    with store.writer("test"):
        assert store.rollback()[1] == "7.2.0"
