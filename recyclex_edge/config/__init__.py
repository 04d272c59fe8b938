"""The typed configuration: one schema, one module per section, the single source of truth.

`load_config()` reads `config/recyclex.yaml`-style files; `recyclex-edge check-config` uses it to
validate without starting anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field

from recyclex_edge.config.base import Section
from recyclex_edge.config.camera import CameraConfig
from recyclex_edge.config.capture import AdaptationConfig, CaptureConfig, DriftConfig
from recyclex_edge.config.decision import DecisionConfig
from recyclex_edge.config.detector import DetectorConfig
from recyclex_edge.config.device import DeviceConfig
from recyclex_edge.config.gpio import GpioConfig
from recyclex_edge.config.http import HttpConfig
from recyclex_edge.config.loader import load_mapping
from recyclex_edge.config.logging import LoggingConfig
from recyclex_edge.config.model import ModelConfig
from recyclex_edge.config.mqtt import MqttConfig
from recyclex_edge.config.sorter import SorterConfig
from recyclex_edge.config.storage import StorageConfig


class Config(Section):
    """The whole daemon configuration."""

    device: DeviceConfig = Field(default_factory=DeviceConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    gpio: GpioConfig = Field(default_factory=GpioConfig)
    sorter: SorterConfig = Field(default_factory=SorterConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


def load_config(
    path: Path | None = None,
    overrides: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read and validate a config file plus `dotted.key=value` overrides.

    Relative paths inside the file (model.path, storage.state_dir) stay as written: they are resolved
    against the working directory, which systemd sets with WorkingDirectory=.
    Raises ConfigError with every problem found.
    """
    config: Config = load_mapping(Config, path, overrides, os.environ if environ is None else environ)
    return config


__all__ = [
    "AdaptationConfig",
    "CameraConfig",
    "CaptureConfig",
    "Config",
    "DecisionConfig",
    "DetectorConfig",
    "DeviceConfig",
    "DriftConfig",
    "GpioConfig",
    "HttpConfig",
    "LoggingConfig",
    "ModelConfig",
    "MqttConfig",
    "SorterConfig",
    "StorageConfig",
    "load_config",
]
