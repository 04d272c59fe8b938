"""Benchmark of the site adaptation refit; prints one JSON document.

    .venv/bin/python tools/bench/adaptation.py [--items 1000] [--model PATH] [--repeats 3]

- `fit_s`: the adaptation maths alone (k-fold cross-validation over both heads, every temperature and
  mixture weight, then the final fit) on N labelled items with embeddings of the model card's size
  (1,280 when the card declares none), seeded clusters with a base model that is often wrong.
- `refit_s`: what the daemon's refit thread does: read N labelled items' stored features from a capture
  store in a temporary directory, fit, save the adaptation, swap it in. Features are stored as the
  model would give them (synthetic vectors of its output sizes), so no photo is re-embedded.
- `apply_us`: adapting one item's probabilities at sorting time.
Target (issue 14): refit under 2 s for 1,000 labelled items on this machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from recyclex_edge.classifier import Classifier
from recyclex_edge.config import load_config
from recyclex_edge.fieldlearning import FieldLearning
from recyclex_edge.fieldlearning.adaptation import fit
from recyclex_edge.fieldlearning.store import Features
from recyclex_edge.ids import new_event_id

TINY_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300080606070605080707070909080a0c140d0c0b0b0c1912130f"
    "141d1a1f1e1d1a1c1c20242e2720222c231c1c2837292c30313434341f27393d38323c2e333432ffc0000b080001000101011100"
    "ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000"
    "017d01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a"
    "3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a9293949596"
    "9798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2"
    "f3f4f5f6f7f8f9faffda0008010100003f00fbd3ffd9"
)


def synthetic(items: int, labels: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(labels, size))
    y = rng.integers(0, labels, items)
    embeddings = (centres[y] + 1.5 * rng.normal(size=(items, size))).astype(np.float32)
    base = rng.dirichlet(np.ones(labels), items)
    right = rng.random(items) < 0.4
    base[right, y[right]] += 1.0
    return y, (base / base.sum(axis=1, keepdims=True)).astype(np.float32), embeddings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    classifier = Classifier(args.model)
    card = classifier.card
    size = card.embedding.size if card.embedding is not None else 1280
    y, base, embeddings = synthetic(args.items, len(card.labels), size)
    names = [card.labels[i] for i in y]

    fit_s = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result = fit(
            card.labels,
            names,
            base,
            embeddings,
            model_sha256=card.sha256,
            model_version=card.version,
            max_missort_rate=0.1,
        )
        fit_s.append(time.perf_counter() - started)
    assert result.adaptation is not None, result.reason
    adaptation = result.adaptation

    apply_us = []
    for index in range(200):
        started = time.perf_counter()
        adaptation.apply(base[index], embeddings[index])
        apply_us.append((time.perf_counter() - started) * 1e6)

    refit_s = []
    with tempfile.TemporaryDirectory(prefix="bench-adaptation-") as work:
        config = load_config(None, [f"storage.state_dir={work}"], environ={})
        site = FieldLearning(config.capture, config.decision, Path(work))
        site.use_classifier(classifier)
        store = site.store
        assert store is not None
        stored_embeddings = embeddings if card.embedding is not None else None
        for index, name in enumerate(names):
            event = {
                "id": new_event_id(),
                "class": name,
                "confidence": 0.5,
                "decision": "uncertain",
                "model": {"name": card.name, "version": card.version},
            }
            vector = None if stored_embeddings is None else stored_embeddings[index]
            store.add(
                event,
                TINY_JPEG,
                Features(base[index], vector),
                model_sha256=card.sha256,
                reason="sample",
                width=1,
                height=1,
                label=name,
                labelled_by="bench",
            )
        for _ in range(args.repeats):
            started = time.perf_counter()
            refit = site.refit()
            refit_s.append(time.perf_counter() - started)
        site.close()

    print(
        json.dumps(
            {
                "benchmark": "adaptation",
                "host": {"machine": platform.machine(), "python": platform.python_version()},
                "model": {
                    "name": card.name,
                    "version": card.version,
                    "embedding": card.embedding is not None,
                },
                "items": args.items,
                "embedding_size": size,
                "fit_s": {"median": round(statistics.median(fit_s), 3), "runs": [round(s, 3) for s in fit_s]},
                "refit_s": {
                    "median": round(statistics.median(refit_s), 3),
                    "runs": [round(s, 3) for s in refit_s],
                    "features": "embedding" if card.embedding is not None else "log-probabilities",
                    "result": refit.reason,
                },
                "apply_us_p50": round(statistics.median(apply_us), 1),
                "target_refit_s": 2.0,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
