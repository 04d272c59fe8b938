#!/usr/bin/env python3
"""Measure site adaptation the way a technician would use it, reproducibly, and print one JSON document.

For each seed: pick N photos per class from a site's folder (SITE/<label>/<image>), teach a fresh bin
with `recyclex-edge labels import --config`, then `recyclex-edge classify --json --config` the rest and
score top-1, the share accepted at the bin's own decisions, and the share of those mis-sorted. The base
model (no adaptation) is scored on the same held-out photos.

    .venv/bin/python tools/fieldlearning/measure.py ../shared/datasets/drinking-waste-dev [--per-class 5]
        [--seeds 0 1 2] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recyclex_edge", *args], capture_output=True, text=True, check=False
    )


def score(lines: list[dict[str, Any]], truth: dict[str, str]) -> dict[str, Any]:
    results = [line for line in lines if "error" not in line]
    correct = sum(line["class"] == truth[line["path"]] for line in results)
    accepted = [line for line in results if line["decision"] != "uncertain"]
    missorted = sum(line["decision"] != truth[line["path"]] for line in accepted)
    return {
        "photos": len(results),
        "top1": round(correct / len(results), 4),
        "accepted": round(len(accepted) / len(results), 4),
        "missorted_among_accepted": round(missorted / len(accepted), 4) if accepted else None,
    }


def classify(paths: list[Path], config: Path | None, model: Path | None) -> list[dict[str, Any]]:
    args = ["classify", "--json", *[str(p) for p in paths]]
    if config is not None:
        args += ["--config", str(config)]
    elif model is not None:
        args += ["--model", str(model)]
    done = cli(*args)
    if done.returncode not in (0, 1):
        raise SystemExit(f"classify failed: {done.stderr}")
    return [json.loads(line) for line in done.stdout.splitlines()]


def run_seed(site: Path, per_class: int, seed: int, model: Path | None) -> dict[str, Any]:
    rng = random.Random(seed)
    taught: dict[str, list[Path]] = {}
    held_out: dict[str, str] = {}
    for folder in sorted(p for p in site.iterdir() if p.is_dir()):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        chosen = set(rng.sample(photos, per_class))
        taught[folder.name] = sorted(chosen)
        held_out.update({str(p): folder.name for p in photos if p not in chosen})
    with tempfile.TemporaryDirectory(prefix="site-measure-") as work:
        root = Path(work)
        teach = root / "teach"
        for label, photos in taught.items():
            (teach / label).mkdir(parents=True)
            for photo in photos:
                (teach / label / photo.name).symlink_to(photo.resolve())
        config = root / "bin.yaml"
        model_line = f"model: {{path: {model.resolve()}}}\n" if model is not None else ""
        config.write_text(f"storage: {{state_dir: {root / 'state'}}}\n{model_line}")
        imported = cli("labels", "import", "--config", str(config), str(teach))
        if imported.returncode != 0:
            raise SystemExit(f"labels import failed: {imported.stderr}")
        stats = json.loads(cli("labels", "stats", "--config", str(config)).stdout)
        paths = [Path(p) for p in sorted(held_out)]
        adapted = score(classify(paths, config, model), held_out)
        base = score(classify(paths, None, model), held_out)
    return {
        "seed": seed,
        "taught": sum(len(p) for p in taught.values()),
        "adaptation": stats["adaptation"],
        "adaptation_detail": stats["adaptation_detail"],
        "base": base,
        "adapted": adapted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("site", type=Path)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", type=Path, default=None, help="a .tflite with its card (default: shipped)")
    args = parser.parse_args()
    runs = [run_seed(args.site, args.per_class, seed, args.model) for seed in args.seeds]

    def mean(key: str, part: str) -> float | None:
        values = [r[part][key] for r in runs if r[part][key] is not None]
        return round(sum(values) / len(values), 4) if values else None

    keys = ("top1", "accepted", "missorted_among_accepted")
    summary = {part: {key: mean(key, part) for key in keys} for part in ("base", "adapted")}
    print(
        json.dumps(
            {"site": str(args.site), "per_class": args.per_class, "mean": summary, "runs": runs}, indent=2
        )
    )


if __name__ == "__main__":
    main()
