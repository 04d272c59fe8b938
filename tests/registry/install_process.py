"""A CLI-like writer in a process of its own, so that tests can kill -9 it at a named step.

    python -m tests.registry.install_process CONFIG PACKAGE STEP   (from the repository root)

Installs and activates PACKAGE into the registry of CONFIG; at STEP (see ModelStore's steps) it
prints "at STEP" and waits to be killed. Every step passed is printed too.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from recyclex_edge.config import load_config
from recyclex_edge.registry.package import read_package
from recyclex_edge.registry.store import ModelStore


def main(config_path: Path, package_path: Path, stop_at: str) -> None:
    config = load_config(config_path, environ=os.environ)

    def on_step(name: str) -> None:
        print(f"at {name}", flush=True)
        if name == stop_at:
            while True:
                time.sleep(1)

    store = ModelStore.for_config(config, os.environ, on_step=on_step)
    package = read_package(package_path.read_bytes(), config.model.public_keys(), allow_unsigned=False)
    with store.writer("install_process"):
        store.install(package, by="test", source=str(package_path), activate=True)
    print("done", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
