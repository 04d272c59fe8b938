"""The model card: the JSON beside a .tflite file that says how to feed it and how far to trust it.

The card is the contract between the training tools and the runtime. Preprocessing, label order and the
recommended confidence threshold all come from here, never from constants in code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recyclex_edge.errors import ModelError

SHIPPED_MODEL = Path(__file__).parent / "models" / "trashnet_lite0_int8.tflite"


class _CardPart(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class CardInput(_CardPart):
    width: int = Field(gt=0, le=2048)
    height: int = Field(gt=0, le=2048)
    color_order: Literal["RGB", "BGR"]
    resize: Literal["squash", "center_crop"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: Literal["uint8", "int8", "float32"]

    @model_validator(mode="after")
    def _std_not_zero(self) -> CardInput:
        if any(value == 0 for value in self.std):
            raise ValueError("input.std must not contain 0")
        return self


class CardOutput(_CardPart):
    kind: Literal["logits", "probabilities"]
    temperature: float = Field(1.0, gt=0, description="Softmax temperature fitted for calibration.")


class CardDecision(_CardPart):
    threshold: float = Field(gt=0, le=1)
    coverage: float | None = None
    missort_rate: float | None = None
    chosen_on: str | None = None


class CardEmbedding(_CardPart):
    """The model's second output: the pooled feature vector the logits are computed from.

    Site adaptation (nearest class prototypes, a small head) works on it without retraining the model.
    """

    size: int = Field(gt=0, le=65536, description="Number of values in the embedding output.")
    layer: str = Field("", description="Where in the network it is taken, for people.")


class ModelCard(_CardPart):
    card_schema: Literal[1]
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str = ""
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    labels: tuple[str, ...] = Field(min_length=2)
    input: CardInput
    output: CardOutput
    embedding: CardEmbedding | None = None
    decision: CardDecision
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _labels_unique(self) -> ModelCard:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if self.embedding is not None and self.embedding.size == len(self.labels):
            # Outputs are told apart by their size; equal sizes would make that ambiguous.
            raise ValueError("embedding.size must differ from the number of labels")
        return self


def card_path_for(model_path: Path) -> Path:
    """The card lives beside the model with the same stem."""
    return model_path.with_suffix(".json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_card(model_path: Path) -> ModelCard:
    """Read and check the card of `model_path`, including the model file's sha256.

    Raises ModelError with a message that says what to do.
    """
    if not model_path.is_file():
        raise ModelError(f"model file {model_path} does not exist; check model.path in the config")
    card_path = card_path_for(model_path)
    try:
        raw = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"model card {card_path} is missing; every model needs its card (JSON) beside it"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"model card {card_path} cannot be read as JSON: {exc}") from None
    try:
        card = ModelCard.model_validate(raw)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '<root>'}: {error['msg']}" for error in exc.errors()
        )
        raise ModelError(f"model card {card_path} is invalid: {details}") from None
    actual = sha256_of(model_path)
    if actual != card.sha256:
        raise ModelError(
            f"model file {model_path} does not match its card: sha256 is {actual}, the card says "
            f"{card.sha256}; the file is corrupt or the card belongs to another model"
        )
    return card
