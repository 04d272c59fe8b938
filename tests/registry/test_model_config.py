"""model.trusted_keys: each key checked and located; a key can come from a systemd credential."""

from __future__ import annotations

from pathlib import Path

import pytest

from recyclex_edge.config import load_config
from recyclex_edge.errors import ConfigError
from tests.registry.support import keypair


def test_each_bad_key_is_located_with_what_was_expected(tmp_path: Path) -> None:
    _, good = keypair(tmp_path / "keys")
    path = tmp_path / "bin.yaml"
    keys = [good, "recyclex-ed25519 AAAA fleet", "ssh-ed25519 AAAA"]
    path.write_text("model:\n  trusted_keys:\n" + "".join(f'    - "{key}"\n' for key in keys))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    problems = [str(problem) for problem in caught.value.problems]
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:4: model.trusted_keys.1:") and "32 bytes (got 3)" in problems[0]
    assert (
        problems[1].startswith(f"{path}:5: model.trusted_keys.2:")
        and "recyclex-ed25519 <base64 key> <name>" in problems[1]
    )


def test_a_trusted_key_from_a_systemd_credential(tmp_path: Path) -> None:
    _, pub = keypair(tmp_path / "keys")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "fleet-key").write_text(pub + "\n")
    path = tmp_path / "bin.yaml"
    path.write_text("model:\n  trusted_keys: ['${credential:fleet-key}']\n")
    config = load_config(path, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert [key.name for key in config.model.public_keys()] == ["fleet"]
