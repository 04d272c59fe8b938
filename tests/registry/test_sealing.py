"""At-rest encryption of installed models: only ciphertext on disk, the model decrypted into memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recyclex_edge.config import load_config
from recyclex_edge.errors import RegistryError
from recyclex_edge.model_card import SHIPPED_MODEL
from recyclex_edge.registry.package import read_package
from recyclex_edge.registry.service import open_classifier
from recyclex_edge.registry.store import ModelStore
from tests.conftest import val_photos
from tests.registry.support import bin_config, keypair, package_file

REPO = Path(__file__).resolve().parents[2]
KEY_HEX = "7d" * 32


def credentials(folder: Path, key_text: str) -> dict[str, str]:
    folder.mkdir(exist_ok=True)
    (folder / "model-key").write_text(key_text + "\n")
    return {"CREDENTIALS_DIRECTORY": str(folder)}


def test_installed_models_are_only_ciphertext_on_disk_and_classify_from_memory(tmp_path: Path) -> None:
    key, pub = keypair(tmp_path / "keys")
    config_path = bin_config(tmp_path, [pub], encryption_key_credential="model-key")
    config = load_config(config_path, environ={})
    environ = credentials(tmp_path / "creds", KEY_HEX)
    store = ModelStore.for_config(config, environ)
    package = read_package(
        package_file(tmp_path, "7.2.0", key).read_bytes(), config.model.public_keys(), allow_unsigned=False
    )
    with store.writer("test"):
        store.install(package, by="test", source="test", activate=True)

    plaintext = SHIPPED_MODEL.read_bytes()
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert plaintext[1000:1064] not in content, f"{path} holds the model in clear"
    entry = store.active()
    assert entry.sealed and entry.as_dict()["encrypted"] is True
    classifier = open_classifier(store, entry, num_threads=1, pool_size=1)
    assert classifier.card.version == "7.2.0"

    # The CLI classifies with it too, given the credential, and says which version it used.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "recyclex_edge",
            "classify",
            "--json",
            "--config",
            str(config_path),
            str(val_photos("metal")[0]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, **environ},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"]["version"] == "7.2.0"

    wrong = ModelStore.for_config(config, credentials(tmp_path / "other", "00" * 32))
    with pytest.raises(RegistryError, match="wrong key, or the file was changed"):
        open_classifier(wrong, wrong.active(), num_threads=1, pool_size=1)
    sealed = entry.model_path.read_bytes()
    entry.model_path.write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(RegistryError, match="wrong key, or the file was changed"):
        open_classifier(store, store.active(), num_threads=1, pool_size=1)


def test_a_key_that_is_missing_or_malformed_is_named(tmp_path: Path) -> None:
    _, pub = keypair(tmp_path / "keys")
    config = load_config(bin_config(tmp_path, [pub], encryption_key_credential="model-key"), environ={})
    with pytest.raises(RegistryError, match=r"CREDENTIALS_DIRECTORY is not set"):
        ModelStore.for_config(config, {})
    with pytest.raises(RegistryError, match="32 bytes as 64 hex digits or base64"):
        ModelStore.for_config(config, credentials(tmp_path / "creds", "too-short"))
