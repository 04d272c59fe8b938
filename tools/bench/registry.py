"""Benchmark of the model registry's costs; prints one JSON document.

    .venv/bin/python tools/bench/registry.py [--repeats N]

On the shipped model (about 4 MB), in a temporary state directory:
- verify_ms: reading a package and checking it (sha256 of the model, Ed25519 over card and model);
- install_ms: verify + write the version (fsynced) + switch the pointer, as `model install` does;
- open_ms / open_sealed_ms: building a one-interpreter Classifier from the plain file and from an
  AES-GCM sealed one (decrypted into memory), i.e. what encryption at rest adds to a model switch;
- activate_ms: `ModelRegistry.activate` between two installed versions (load, check, pointer, switch),
  what a bin spends on an activation before the new model sorts.
Medians over N repeats. The fsyncs depend on the storage: run it on the bin's SD card for real numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recyclex_edge.config import Config, load_config
from recyclex_edge.health import HealthRegistry
from recyclex_edge.model_card import SHIPPED_MODEL, card_path_for
from recyclex_edge.registry.keys import SigningKey, generate_keypair, load_signing_key
from recyclex_edge.registry.package import pack, read_package
from recyclex_edge.registry.service import ModelRegistry, Switch, open_classifier
from recyclex_edge.registry.store import ModelStore


def signed_package(folder: Path, version: str, key: SigningKey) -> bytes:
    """The shipped model under another version number, packed and signed."""
    folder.mkdir(parents=True, exist_ok=True)
    card = json.loads(card_path_for(SHIPPED_MODEL).read_text())
    card["version"] = version
    model = folder / f"{version}.tflite"
    model.write_bytes(SHIPPED_MODEL.read_bytes())
    card_path_for(model).write_text(json.dumps(card))
    return pack(model, key)


def bin_config(folder: Path, pub: str, **model: Any) -> Config:
    overrides = [f"storage.state_dir={folder}", f'model.trusted_keys=["{pub}"]']
    overrides += [f"model.{name}={value}" for name, value in model.items()]
    return load_config(None, overrides, environ={})


def median_ms(repeats: int, run: Callable[[int], None]) -> float:
    samples = []
    for index in range(repeats):
        started = time.perf_counter()
        run(index)
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        key_path, pub_path = generate_keypair(folder / "keys", "bench")
        key, pub = load_signing_key(key_path), pub_path.read_text().strip()
        packages = [signed_package(folder / "pkgs", f"2.0.{n}", key) for n in range(repeats + 2)]
        config = bin_config(folder / "plain", pub, keep=20)
        trusted = config.model.public_keys()
        result: dict[str, Any] = {"host": platform.node(), "machine": platform.machine(), "repeats": repeats}
        result["package_bytes"] = len(packages[0])
        result["verify_ms"] = median_ms(
            repeats, lambda i: read_package(packages[i], trusted, allow_unsigned=False)
        )

        store = ModelStore.for_config(config, {})

        def install(index: int) -> None:
            with store.writer("bench"):
                package = read_package(packages[index], trusted, allow_unsigned=False)
                store.install(package, by="bench", source="bench", activate=True)

        result["install_ms"] = median_ms(repeats, install)
        entry = store.active()
        result["open_ms"] = median_ms(
            repeats, lambda i: open_classifier(store, entry, num_threads=1, pool_size=1)
        )

        (folder / "creds").mkdir()
        (folder / "creds" / "model-key").write_text("5a" * 32)
        environ = {"CREDENTIALS_DIRECTORY": str(folder / "creds")}
        sealed_config = bin_config(folder / "sealed", pub, encryption_key_credential="model-key")
        sealed = ModelStore.for_config(sealed_config, environ)
        with sealed.writer("bench"):
            sealed.install(
                read_package(packages[0], trusted, allow_unsigned=False), by="b", source="b", activate=True
            )
        sealed_entry = sealed.active()
        result["open_sealed_ms"] = median_ms(
            repeats, lambda i: open_classifier(sealed, sealed_entry, num_threads=1, pool_size=1)
        )

        loop = asyncio.new_event_loop()
        registry = ModelRegistry(config, {}, HealthRegistry())
        registry.start()
        registry.attach(
            Switch(check=lambda c: None, use=lambda c: None, use_shadow=lambda c: None),
            loop,
            pipeline_errors=lambda: 0,
            pipeline_stalled=lambda: False,
        )
        versions = [entry.version for entry in registry.store.entries() if not entry.factory]
        result["activate_ms"] = median_ms(repeats, lambda i: registry.activate(versions[i % 2], who="bench"))
        registry.close()
        loop.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
