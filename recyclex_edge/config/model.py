from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from recyclex_edge.config.base import Section
from recyclex_edge.errors import RegistryError
from recyclex_edge.registry.keys import PublicKey, parse_public_key


def _public_key_text(text: str) -> str:
    try:
        parse_public_key(text)
    except RegistryError as error:
        raise ValueError(str(error)) from None
    return text


class ModelWatchConfig(Section):
    """The watch after an activation: a model that misbehaves in it is replaced by the previous one."""

    period_s: float = Field(
        3600.0, ge=0, le=7 * 86400, description="How long a newly activated model is watched; 0: no watch."
    )
    min_items: int = Field(
        20,
        ge=1,
        le=10_000,
        description="Items the new model must have judged before its uncertain rate counts.",
    )
    uncertain_ratio: float = Field(
        2.0,
        ge=1,
        le=100,
        description="Roll back when the uncertain rate exceeds the predecessor's times this ratio ...",
    )
    uncertain_margin: float = Field(
        0.25,
        ge=0,
        le=1,
        description="... and also exceeds the predecessor's plus this margin (both must hold).",
    )
    max_errors: int = Field(
        3, ge=1, le=1000, description="Roll back after this many failed classifications in the watch period."
    )
    max_crashes: int = Field(
        3,
        ge=1,
        le=100,
        description="Roll back when the daemon ended this often without a clean stop within the watch.",
    )


class ModelPromoteConfig(Section):
    """When a shadow candidate becomes the active model."""

    mode: Literal["manual", "auto"] = Field(
        "manual", description="manual: only by command; auto: when the criteria below are met."
    )
    min_items: int = Field(
        200, ge=10, le=100_000, description="Items the candidate must have judged beside the active model."
    )
    min_agreement: float = Field(
        0.9, ge=0, le=1, description="Share of items on which both models took the same decision."
    )
    max_uncertain_increase: float = Field(
        0.02,
        ge=0,
        le=1,
        description="The candidate's uncertain rate may exceed the active model's by at most this much.",
    )


class ModelConfig(Section):
    """The classifier model, how many interpreters run it, and how new versions are trusted and kept."""

    path: Path | None = Field(
        None,
        description="The factory model: a .tflite file with its card (.json) beside it. Empty: the shipped "
        "model. Installed versions (recyclex-edge model install) take precedence once activated.",
    )
    num_threads: int = Field(1, ge=1, le=8, description="Threads per interpreter (XNNPACK).")
    pool_size: int = Field(
        2, ge=1, le=8, description="Interpreters kept loaded; this many classifications run at once."
    )
    trusted_keys: list[Annotated[str, AfterValidator(_public_key_text)]] = Field(
        default_factory=list,
        description="Public keys whose model packages this bin installs: each the one-line text of a .pub "
        "file from 'recyclex-edge model keygen' (or ${credential:NAME}).",
    )
    allow_unsigned: bool = Field(
        False,
        description="Install unsigned packages too. For labs only: anyone could then replace the model.",
    )
    keep: int = Field(
        3, ge=1, le=20, description="Installed versions kept (the factory model is always kept besides)."
    )
    max_package_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024 * 1024,
        le=1024 * 1024 * 1024,
        description="Largest model package accepted by upload or download.",
    )
    download_timeout_s: float = Field(
        300.0, gt=0, le=3600, description="Longest time an install-model download may take."
    )
    encryption_key_credential: str | None = Field(
        None,
        description="Name of the systemd credential (LoadCredential=) holding the 32-byte AES key that "
        "encrypts installed models at rest. Empty: not encrypted. Never put the key itself here.",
    )
    watch: ModelWatchConfig = Field(
        default_factory=ModelWatchConfig, description="Automatic rollback after an activation."
    )
    promote: ModelPromoteConfig = Field(
        default_factory=ModelPromoteConfig, description="Promotion of a shadow candidate."
    )

    def public_keys(self) -> list[PublicKey]:
        return [parse_public_key(text) for text in self.trusted_keys]
