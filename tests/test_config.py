"""The config schema and loader: every problem located by file, line, key path, value and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from recyclex_edge.cli import main
from recyclex_edge.config import Config, load_config
from recyclex_edge.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bin.yaml"
    path.write_text(text)
    return path


def problems_of(
    path: Path | None, overrides: list[str] | None = None, environ: dict[str, str] | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides, environ or {})
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize("name", ["recyclex.yaml", "demo.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    assert isinstance(load_config(REPO / "config" / name, environ={}), Config)


def test_defaults_validate_without_a_file() -> None:
    config = load_config(None, environ={})
    assert config.http.auth.enabled is True, "auth must be on unless a config turns it off"


def test_operator_key_names_are_kept() -> None:
    """Operators' scripts set these keys; renaming one breaks them."""
    config = load_config(
        None,
        [
            "device.id=bin-7",
            "http.host=127.0.0.1",
            "http.port=18080",
            "http.auth.enabled=false",
            "http.rate_limit.enabled=false",
            "mqtt.enabled=false",
            "mqtt.host=broker.local",
            "mqtt.port=8883",
            "storage.state_dir=/tmp/x",
            "model.path=/tmp/m.tflite",
            "camera.source=none",
            "gpio.pin_factory=mock",
        ],
        environ={},
    )
    assert config.device.id == "bin-7"
    assert config.http.port == 18080 and isinstance(config.http.port, int)
    assert config.http.auth.enabled is False and config.http.rate_limit.enabled is False
    assert config.mqtt.enabled is False and config.mqtt.port == 8883
    assert str(config.storage.state_dir) == "/tmp/x" and str(config.model.path) == "/tmp/m.tflite"
    assert config.gpio.pin_factory == "mock"


def test_unknown_key_names_file_line_path_and_the_keys_expected(tmp_path: Path) -> None:
    path = write(tmp_path, "device:\n  id: bin-1\nhttp:\n  port: 8080\n  prot: 1\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:5: http.prot: unknown key")
    assert "port" in problem and "host" in problem


def test_unknown_section_is_rejected(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "htp:\n  port: 1\n"))
    assert "htp: unknown key" in problem and "http" in problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, 'device:\n  id: "bad id"\nhttp:\n  port: 99999\n  auth:\n    enabled: maybe\n')
    problems = problems_of(path)
    assert len(problems) == 3
    by_key = {p.split(": ")[1]: p for p in problems}
    assert by_key["device.id"].startswith(f"{path}:2:") and "'bad id'" in by_key["device.id"]
    assert by_key["http.port"].startswith(f"{path}:4:") and "65535" in by_key["http.port"]
    assert "99999" in by_key["http.port"]
    assert by_key["http.auth.enabled"].startswith(f"{path}:6:") and "boolean" in by_key["http.auth.enabled"]


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "device:\n  id: [unclosed\nhttp:\n  port: 1\n")
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:") and "not valid YAML" in problem


def test_duplicate_keys_are_reported(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "http:\n  port: 1\n  port: 2\n"))
    assert ":3: http.port" in problem and "twice" in problem


def test_a_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "- just\n- a list\n"))
    assert "mapping of sections" in problem


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path / "absent.yaml")
    assert "cannot read the config file" in problem


def test_environment_substitution(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  host: ${BROKER}\n  port: ${BROKER_PORT:-1884}\n")
    config = load_config(path, environ={"BROKER": "broker.plant"})
    assert config.mqtt.host == "broker.plant"
    assert config.mqtt.port == 1884


def test_missing_environment_variable_is_located(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "mqtt:\n  host: ${BROKER}\n"))
    assert problem.startswith(f"{tmp_path / 'bin.yaml'}:2: mqtt.host") and "BROKER is not set" in problem


def test_secrets_from_systemd_credentials(tmp_path: Path) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "mqtt-password").write_text("s3cret\n")
    path = write(tmp_path, "mqtt:\n  password: ${credential:mqtt-password}\n")
    config = load_config(path, environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config), "secrets must never show in reprs or logs"


def test_credential_without_systemd_says_what_to_do(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "mqtt:\n  password: ${credential:mqtt-password}\n"))
    assert "CREDENTIALS_DIRECTORY" in problem and "LoadCredential" in problem


def test_secret_values_never_appear_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  password: [not, a, string]\n")
    (problem,) = problems_of(path)
    assert "mqtt.password" in problem and "not" not in problem.split("mqtt.password", 1)[1].split("--")[0]
    assert "<hidden>" in problem


def test_set_overrides_are_typed_through_the_schema(tmp_path: Path) -> None:
    path = write(tmp_path, "http:\n  port: 8080\n")
    config = load_config(path, ["http.port=18080", "mqtt.enabled=false", "device.id=bin-9"], environ={})
    assert config.http.port == 18080 and config.mqtt.enabled is False and config.device.id == "bin-9"


def test_bad_set_override_is_attributed_to_set() -> None:
    problems = problems_of(None, ["http.port=eighty", "nonsense", "http.port.deeper=1"])
    assert any(p.startswith("--set: http.port: expected a valid integer") for p in problems)
    assert any("--set takes dotted.key=value" in p for p in problems)
    assert any("is not a section" in p for p in problems)


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "http:\n  port: 8080\n")
    assert main(["check-config", str(good)]) == 0
    assert main(["check-config", str(good), "--set", "http.port=0"]) == 2
    err = capsys.readouterr().err
    assert "--set: http.port" in err and "(got 0)" in err


def _leaf_paths(model: type, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path the schema accepts, descending into nested sections."""
    from pydantic import BaseModel

    paths = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _leaf_paths(annotation, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_documented_default_config_has_every_key_with_a_comment() -> None:
    """config/recyclex.yaml is the operators' reference: every key present and explained above it."""
    import yaml

    path = REPO / "config" / "recyclex.yaml"
    text = path.read_text()
    lines = text.splitlines()
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    key_lines: dict[tuple[str, ...], int] = {}

    def index(mapping: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(mapping, yaml.MappingNode):
            for key, value in mapping.value:
                key_lines[(*prefix, key.value)] = key.start_mark.line
                index(value, (*prefix, key.value))

    index(node, ())
    missing = [".".join(p) for p in _leaf_paths(Config) if p not in key_lines]
    assert not missing, f"config/recyclex.yaml lacks: {missing}"
    uncommented = []
    for path_, line in key_lines.items():
        before = lines[line - 1].strip() if line > 0 else ""
        if not (before.startswith("#") or "#" in lines[line]):
            uncommented.append(".".join(path_))
    assert not uncommented, f"keys without a comment in config/recyclex.yaml: {uncommented}"
