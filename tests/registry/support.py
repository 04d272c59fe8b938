"""Helpers for the registry tests: new model versions made from the real shipped model, keys, configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recyclex_edge.model_card import SHIPPED_MODEL, card_path_for
from recyclex_edge.registry.keys import SigningKey, generate_keypair, load_signing_key
from recyclex_edge.registry.package import pack


def model_version(folder: Path, version: str, *, threshold: float | None = None) -> Path:
    """The shipped .tflite with a card that names `version` (and another threshold if given)."""
    folder.mkdir(parents=True, exist_ok=True)
    card: dict[str, Any] = json.loads(card_path_for(SHIPPED_MODEL).read_text())
    card["version"] = version
    if threshold is not None:
        card["decision"]["threshold"] = threshold
    model = folder / f"model-{version}.tflite"
    model.write_bytes(SHIPPED_MODEL.read_bytes())
    card_path_for(model).write_text(json.dumps(card, indent=2))
    return model


def keypair(folder: Path, name: str = "fleet") -> tuple[SigningKey, str]:
    key_path, pub_path = generate_keypair(folder, name)
    return load_signing_key(key_path), pub_path.read_text().strip()


def package_file(
    folder: Path, version: str, key: SigningKey | None, *, threshold: float | None = None
) -> Path:
    path = folder / f"model-{version}.rxm"
    path.write_bytes(pack(model_version(folder / "src", version, threshold=threshold), key))
    return path


def bin_config(folder: Path, trusted: list[str], **model: Any) -> Path:
    """A config file for a bin whose state lives in `folder/state`."""
    document = {"storage": {"state_dir": str(folder / "state")}, "model": {"trusted_keys": trusted, **model}}
    path = folder / "bin.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    return path
