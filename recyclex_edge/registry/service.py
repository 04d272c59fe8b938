"""What the daemon and the CLI use: the active classifier from the registry, and model operations.

(Filled in step by step: loading first.)
"""

from __future__ import annotations

from recyclex_edge.classifier import Classifier
from recyclex_edge.registry.store import ModelEntry, ModelStore


def open_classifier(store: ModelStore, entry: ModelEntry, *, num_threads: int, pool_size: int) -> Classifier:
    """A classifier for `entry`; a sealed model is decrypted into memory only, never to a file."""
    if not entry.sealed:
        return Classifier(entry.model_path, num_threads=num_threads, pool_size=pool_size)
    return Classifier(
        entry.model_path,
        num_threads=num_threads,
        pool_size=pool_size,
        model_content=store.model_bytes(entry),
        card=entry.card,
    )
