"""Shared fixtures: the real shipped model and real TrashNet photos (never mocks of either)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recyclex_edge.classifier import Classifier
from recyclex_edge.model_card import SHIPPED_MODEL

DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "trashnet"
VAL = DATASET / "val"


def val_photos(label: str | None = None) -> list[Path]:
    """Real validation photos, sorted, for one label or all."""
    folders = [VAL / label] if label else sorted(p for p in VAL.iterdir() if p.is_dir())
    return sorted(photo for folder in folders for photo in folder.glob("*.jpg"))


@pytest.fixture(scope="session")
def dataset_val() -> Path:
    if not VAL.is_dir():
        pytest.fail(f"TrashNet val split not found at {VAL}; the tests need ../shared/datasets/trashnet")
    return VAL


@pytest.fixture(scope="session")
def shipped_classifier() -> Classifier:
    """The real shipped model, loaded once for the session."""
    assert SHIPPED_MODEL.is_file(), f"shipped model missing: {SHIPPED_MODEL}"
    return Classifier(num_threads=1, pool_size=2)
