from __future__ import annotations

from pathlib import Path

from pydantic import Field

from recyclex_edge.config.base import Section


class ModelConfig(Section):
    """The classifier model and how many interpreters run it."""

    path: Path | None = Field(
        None, description="A .tflite file; its model card is the .json beside it. Empty: the shipped model."
    )
    num_threads: int = Field(1, ge=1, le=8, description="Threads per interpreter (XNNPACK).")
    pool_size: int = Field(
        2, ge=1, le=8, description="Interpreters kept loaded; this many classifications run at once."
    )
