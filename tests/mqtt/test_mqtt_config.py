"""The mqtt and storage.outbox config sections: defaults, old key names kept, mistakes reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from recyclex_edge.config import MqttConfig, StorageConfig, load_config
from recyclex_edge.errors import ConfigError


def test_defaults_and_the_keys_operators_already_use(tmp_path: Path) -> None:
    path = tmp_path / "recyclex.yaml"
    path.write_text(
        "mqtt:\n  enabled: true\n  host: broker.lan\n  port: 8883\n  password: ${MQTT_PASSWORD}\n"
        "  tls: {enabled: true, ca_file: /etc/ca.pem}\n"
        "storage:\n  state_dir: /var/lib/x\n  outbox: {max_rows: 5000}\n"
    )
    config = load_config(path, environ={"MQTT_PASSWORD": "s3cret"})
    assert config.mqtt.host == "broker.lan" and config.mqtt.port == 8883
    assert config.mqtt.password is not None and config.mqtt.password.get_secret_value() == "s3cret"
    assert config.mqtt.protocol == "5" and config.mqtt.qos == 1
    assert config.mqtt.discovery.prefix == "homeassistant"
    assert config.storage.outbox.max_rows == 5000 and config.storage.outbox.max_bytes == 64 << 20


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ("mqtt.topic_prefix=recyclex/#", "mqtt.topic_prefix"),
        ("mqtt.topic_prefix=/lead", "mqtt.topic_prefix"),
        ("mqtt.qos=0", "mqtt.qos"),
        ("mqtt.tls.cert_file=/c.pem", "cert_file and key_file go together"),
        ("mqtt.reconnect.max_delay_s=0", "mqtt.reconnect.max_delay_s"),
        ("mqtt.keepalive=30", "unknown key"),
        ("storage.outbox.max_rows=10", "storage.outbox.max_rows"),
    ],
)
def test_mistakes_are_reported_with_their_key(override: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override], environ={})
    assert complaint in str(caught.value)


def test_every_field_is_described() -> None:
    def walk(model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation)

    walk(MqttConfig)
    walk(StorageConfig)
