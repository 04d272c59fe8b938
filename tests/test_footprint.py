"""Issue 16's footprint: a bin loads only what its config uses.

Each check runs a real daemon (the shipped model, the default config apart from the overrides named) in a
fresh interpreter, classifies a real photo over HTTP, and then reads `sys.modules`: imports made by the
test process itself cannot hide or fake anything there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import val_photos

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import asyncio, json, sys
import aiohttp
from recyclex_edge.config import load_config
from recyclex_edge.daemon import Daemon

async def main(photo, port, state_dir):
    config = load_config(None, [
        "http.host=127.0.0.1", f"http.port={port}", "http.auth.enabled=false",
        "mqtt.enabled=false", "gpio.pin_factory=mock", f"storage.state_dir={state_dir}",
    ], environ={})
    daemon = Daemon(config, environ={})
    task = asyncio.create_task(daemon.serve())
    await asyncio.wait_for(daemon.started.wait(), 60)
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/predict/image"
        data = open(photo, "rb").read()
        async with session.post(url, data=data, headers={"Content-Type": "image/jpeg"}) as response:
            assert response.status == 200, await response.text()
    daemon.request_stop()
    await task
    print(json.dumps(sorted({name.split(".")[0] for name in sys.modules if sys.modules[name]})))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
"""


def loaded_packages(tmp_path: Path) -> set[str]:
    from tests.mqtt.support import free_port

    photo = val_photos("glass")[0]
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(photo), str(free_port()), str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    packages: list[str] = json.loads(result.stdout.splitlines()[-1])
    return set(packages)


def test_a_bin_without_signing_jwt_or_mqtt_does_not_load_their_libraries(tmp_path: Path) -> None:
    packages = loaded_packages(tmp_path)
    assert "ai_edge_litert" in packages or "tflite_runtime" in packages, "the daemon really classified"
    # No trusted keys, no encryption key, no JWT, MQTT off: cryptography, PyJWT and paho stay on disk.
    assert not packages & {"cryptography", "jwt", "paho"}
