"""Benchmark the shipped classifier; prints one JSON document.

    .venv/bin/python tools/bench/classifier.py [--runs 300] [--photos ../shared/datasets/trashnet/val]

Measures, in one run so the ratios are fair on a noisy shared machine: bare `invoke()`; `classify()` from
a decoded 640x480 frame; `classify()` from JPEG bytes (decode included); each with 1 and 2 interpreter
threads; and the process RSS after loading. The target: classify-from-frame p50 <= 1.10 x bare invoke
p50 (preprocessing must stay negligible next to the model).
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

from recyclex_edge.classifier import Classifier
from recyclex_edge.imaging import decode_image

REPO = Path(__file__).resolve().parents[2]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(action: Callable[[int], object], runs: int, warmup: int = 20) -> dict[str, float]:
    for index in range(warmup):
        action(index)
    samples = []
    for index in range(runs):
        started = time.perf_counter()
        action(index)
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3),
        "mean_ms": round(statistics.fmean(samples), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "datasets" / "trashnet" / "val")
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
            report["model"] = {"name": classifier.card.name, "version": classifier.card.version,
                               "backend": classifier.backend}
        tensors = [classifier.preprocess(frame) for frame in frames]
        n = len(frames)
        bare = timed(lambda i: classifier.invoke_raw(tensors[i % n]), args.runs)
        from_frame = timed(lambda i: classifier.classify(frames[i % n]), args.runs)
        from_jpeg = timed(lambda i: classifier.classify(decode_image(jpegs[i % n])), args.runs)
        report[f"threads_{threads}"] = {
            "invoke": bare,
            "classify_from_frame_640x480": from_frame,
            "classify_from_jpeg": from_jpeg,
            "frame_over_invoke_p50": round(from_frame["p50_ms"] / bare["p50_ms"], 3),
        }
    ratio = report["threads_1"]["frame_over_invoke_p50"]  # type: ignore[index]
    report["target_frame_over_invoke_p50_max"] = 1.10
    report["target_met"] = bool(ratio <= 1.10)
    report["rss_end_mib"] = round(rss_mib(), 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    np.random.seed(0)
    main()
