"""`recyclex-edge model ...` and `classify --config` as an operator runs them: real processes, real model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from recyclex_edge.config import load_config
from recyclex_edge.registry.store import ModelStore
from tests.conftest import val_photos
from tests.registry.support import bin_config, model_version

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recyclex_edge", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def listing(config: Path) -> list[dict[str, object]]:
    done = cli("model", "list", "--json", "--config", config)
    assert done.returncode == 0, done.stderr
    entries: list[dict[str, object]] = json.loads(done.stdout)
    return entries


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_operator_round_trip(tmp_path: Path) -> None:
    assert cli("model", "keygen", "--out", tmp_path / "keys", "--name", "fleet").returncode == 0
    pub = (tmp_path / "keys" / "fleet.pub").read_text().strip()
    config = bin_config(tmp_path, [pub])
    packages = {}
    for version in ("7.2.0", "7.3.0"):
        packages[version] = tmp_path / f"{version}.rxm"
        model = model_version(tmp_path / "src", version)
        done = cli(
            "model", "pack", "--key", tmp_path / "keys" / "fleet.key", "--out", packages[version], model
        )
        assert done.returncode == 0, done.stderr
    assert cli("model", "verify", "--config", config, packages["7.2.0"]).returncode == 0

    for version in ("7.2.0", "7.3.0"):
        done = cli("model", "install", "--config", config, packages[version])
        assert done.returncode == 0, done.stderr
    entries = listing(config)
    assert [(e["version"], e["active"]) for e in entries] == [
        ("factory", False),
        ("7.2.0", False),
        ("7.3.0", True),
    ]
    assert str(entries[2]["installed_by"]).startswith("cli:") and entries[2]["signer"]

    photo = val_photos("glass")[0]
    done = cli("classify", "--json", "--config", config, photo)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"]["version"] == "7.3.0"

    assert cli("model", "rollback", "--config", config).returncode == 0
    assert (
        json.loads(cli("classify", "--json", "--config", config, photo).stdout)["model"]["version"] == "7.2.0"
    )
    audit = (tmp_path / "state" / "models" / "audit.log").read_text().splitlines()
    assert [json.loads(line)["action"] for line in audit] == ["install", "install", "rollback"]


def test_tampered_untrusted_and_unsigned_packages_are_refused_and_change_nothing(tmp_path: Path) -> None:
    cli("model", "keygen", "--out", tmp_path / "keys", "--name", "fleet")
    cli("model", "keygen", "--out", tmp_path / "keys", "--name", "stranger")
    config = bin_config(tmp_path, [(tmp_path / "keys" / "fleet.pub").read_text().strip()])
    model = model_version(tmp_path / "src", "7.2.0")
    good, stranger, unsigned = tmp_path / "good.rxm", tmp_path / "stranger.rxm", tmp_path / "unsigned.rxm"
    cli("model", "pack", "--key", tmp_path / "keys" / "fleet.key", "--out", good, model)
    cli("model", "pack", "--key", tmp_path / "keys" / "stranger.key", "--out", stranger, model)
    cli("model", "pack", "--unsigned", "--out", unsigned, model)
    tampered = tmp_path / "tampered.rxm"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.rxm"
    truncated.write_bytes(good.read_bytes()[:100_000])
    before = snapshot(tmp_path / "state") if (tmp_path / "state").exists() else {}

    for package, reason in (
        (tampered, "changed after signing"),
        (stranger, "does not trust"),
        (unsigned, "unsigned"),
        (truncated, "truncated"),
    ):
        done = cli("model", "install", "--config", config, package)
        assert done.returncode == 2, (package, done.stdout, done.stderr)
        assert reason in done.stderr and "Traceback" not in done.stderr
        assert cli("model", "verify", "--config", config, package).returncode == 2

    state = tmp_path / "state"
    after = snapshot(state)
    assert {k: v for k, v in after.items() if k not in ("models/audit.log", "models/lock")} == before
    assert [json.loads(line)["ok"] for line in (state / "models" / "audit.log").read_text().splitlines()] == [
        False
    ] * 4
    assert [e["version"] for e in listing(config)] == ["factory"]


def test_the_cli_refuses_to_write_while_the_daemon_holds_the_registry(tmp_path: Path) -> None:
    cli("model", "keygen", "--out", tmp_path / "keys", "--name", "fleet")
    config = bin_config(tmp_path, [(tmp_path / "keys" / "fleet.pub").read_text().strip()])
    store = ModelStore.for_config(load_config(config, environ={}), {})
    with store.writer("the recyclex-edge daemon"):
        done = cli("model", "rollback", "--config", config)
    assert done.returncode == 2
    assert "in use by the recyclex-edge daemon" in done.stderr and "install-model" in done.stderr


def test_the_cli_does_not_activate_a_version_that_does_not_load(tmp_path: Path) -> None:
    cli("model", "keygen", "--out", tmp_path / "keys", "--name", "fleet")
    config = bin_config(tmp_path, [(tmp_path / "keys" / "fleet.pub").read_text().strip()])
    for version in ("7.2.0", "7.3.0"):
        package = tmp_path / f"{version}.rxm"
        model = model_version(tmp_path / "src", version)
        cli("model", "pack", "--key", tmp_path / "keys" / "fleet.key", "--out", package, model)
        assert cli("model", "install", "--config", config, package).returncode == 0
    (tmp_path / "state" / "models" / "versions" / "7.2.0" / "model.tflite").write_bytes(b"bit rot")
    for command in (("rollback",), ("activate", "7.2.0")):
        done = cli("model", *command, "--config", config)
        assert done.returncode == 2 and "version 7.2.0 does not load, so nothing was changed" in done.stderr
    assert [e["active"] for e in listing(config)] == [False, False, True]
