"""Benchmark the shipped classifier; prints one JSON document.

    .venv/bin/python tools/bench/classifier.py [--runs 300] [--photos ../shared/datasets/trashnet/val]
        [--candidate PATH.tflite ...]

Measures, in one run so the ratios are fair on a noisy shared machine: bare `invoke()`; `classify()` from
a decoded 640x480 frame; `classify()` from JPEG bytes (decode included); each with 1 and 2 interpreter
threads; and the process RSS after loading. The target: classify-from-frame p50 <= 1.10 x bare invoke
p50 (preprocessing must stay negligible next to the model); and (issue 13) bare `invoke()` p50 <= 15 ms
with one thread. Each `--candidate` model (with its card beside it) has its bare one-thread `invoke()`
timed interleaved with the shipped model's, so a model not yet shipped is compared under the same load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from support import rss_mib

from recyclex_edge.classifier import Classifier
from recyclex_edge.imaging import decode_image

REPO = Path(__file__).resolve().parents[2]


def summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3),
        "mean_ms": round(statistics.fmean(samples), 3),
    }


def interleaved(
    actions: dict[str, Callable[[int], object]], runs: int, warmup: int = 20
) -> dict[str, list[float]]:
    """Time each action once per round, round after round, so that every one of them sees the same
    background load on a shared machine; the ratios between them are then fair."""
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for index in range(warmup + runs):
        for name, action in actions.items():
            started = time.perf_counter()
            action(index)
            if index >= warmup:
                samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def measure(
    classifier: Classifier, frames: list[np.ndarray], jpegs: list[bytes], runs: int
) -> dict[str, object]:
    tensors = [classifier.preprocess(frame) for frame in frames]
    n = len(frames)
    samples = interleaved(
        {
            "invoke": lambda i: classifier.invoke_raw(tensors[i % n]),
            "preprocess_640x480": lambda i: classifier.preprocess(frames[i % n]),
            "classify_from_frame_640x480": lambda i: classifier.classify(frames[i % n]),
            "classify_from_jpeg": lambda i: classifier.classify(decode_image(jpegs[i % n])),
        },
        runs,
    )
    report: dict[str, object] = {name: summary(values) for name, values in samples.items()}
    report["frame_over_invoke_p50"] = round(
        statistics.median(samples["classify_from_frame_640x480"]) / statistics.median(samples["invoke"]), 3
    )
    return report


def compare_invoke(shipped: Classifier, candidates: list[Path], runs: int) -> dict[str, object]:
    """Bare one-thread invoke() of each candidate, round by round with the shipped model's."""
    models = {"shipped": shipped} | {
        str(path): Classifier(path, num_threads=1, pool_size=1) for path in candidates
    }
    blank = {
        name: np.zeros(model.preprocess(np.zeros((480, 640, 3), np.uint8)).shape, np.uint8)
        for name, model in models.items()
    }
    samples = interleaved(
        {name: (lambda i, m=model, t=blank[name]: m.invoke_raw(t)) for name, model in models.items()}, runs
    )
    shipped_p50 = statistics.median(samples["shipped"])
    return {
        name: {
            "model": {"name": model.card.name, "version": model.card.version},
            "input": [model.card.input.width, model.card.input.height],
            "invoke_p50_ms": round(statistics.median(samples[name]), 3),
            "over_shipped_p50": round(statistics.median(samples[name]) / shipped_p50, 3),
        }
        for name, model in models.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument(
        "--photos", type=Path, default=REPO.parent / "shared" / "datasets" / "trashnet" / "val"
    )
    parser.add_argument("--candidate", type=Path, action="append", default=[])
    args = parser.parse_args()

    photos = sorted(args.photos.rglob("*.jpg"))[:32]
    jpegs = [path.read_bytes() for path in photos]
    frames = [cv2.resize(decode_image(data), (640, 480)) for data in jpegs]

    report: dict[str, object] = {"runs": args.runs, "photos": len(photos)}
    rss_before = rss_mib()
    for threads in (1, 2):
        classifier = Classifier(num_threads=threads, pool_size=1)
        if threads == 1:
            report["rss_after_load_mib"] = round(rss_mib(), 1)
            report["rss_before_load_mib"] = round(rss_before, 1)
            report["model"] = {
                "name": classifier.card.name,
                "version": classifier.card.version,
                "backend": classifier.backend,
            }
        report[f"threads_{threads}"] = measure(classifier, frames, jpegs, args.runs)
        if threads == 1 and args.candidate:
            report["invoke_1thread_vs_shipped"] = compare_invoke(classifier, args.candidate, args.runs)
    ratio = report["threads_1"]["frame_over_invoke_p50"]  # type: ignore[index]
    invoke_p50 = report["threads_1"]["invoke"]["p50_ms"]  # type: ignore[index]
    report["target_frame_over_invoke_p50_max"] = 1.10
    report["target_invoke_p50_1thread_max_ms"] = 15.0
    report["target_met"] = bool(ratio <= 1.10)
    report["target_invoke_met"] = bool(invoke_p50 <= 15.0)
    report["rss_end_mib"] = round(rss_mib(), 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
