"""TrashNet loading under the runtime preprocessing contract, and the dataset digest.

The runtime engine decodes with OpenCV (BGR), squash-resizes the whole frame with
`recyclex_edge.resize.shrink` and converts to RGB; `load_rgb` calls that same function, so
training, calibration, evaluation and the device see the same pixels.
"""

from __future__ import annotations

import hashlib
import sys
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

# The runtime package, for its dependency-free resize only (not installed into this venv).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from recyclex_edge.resize import shrink

LABELS = ["cardboard", "glass", "metal", "paper", "plastic", "trash"]


@dataclass
class Split:
    paths: list[Path]
    labels: np.ndarray  # int class index per path


def load_rgb(
    path: Path, size_wh: tuple[int, int], effect: Callable[[np.ndarray], np.ndarray] | None = None
) -> np.ndarray:
    """Decode + squash-resize exactly as the runtime engine does (card resize "squash").

    `effect` alters the full-size BGR photo first, as a different camera or scene would
    (robustness.py); it is never used for training or the card's main metrics.
    """
    bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode {path}")
    if effect is not None:
        bgr = effect(bgr)
    return cv2.cvtColor(shrink(bgr, size_wh), cv2.COLOR_BGR2RGB)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def list_split(root: Path, split: str) -> Split:
    paths, labels = [], []
    for index, label in enumerate(LABELS):
        found = sorted((root / split / label).glob("*.jpg"))
        if not found:
            raise SystemExit(f"no images in {root / split / label}; is --data the TrashNet folder?")
        paths += found
        labels += [index] * len(found)
    return Split(paths, np.array(labels, dtype=np.int64))


def drop_cross_class_duplicates(split: Split) -> tuple[Split, list[str]]:
    """Remove images whose exact bytes appear under more than one class.

    TrashNet has three such pairs (a clear bottle filed as both glass and plastic, ...). A photo
    carrying two contradictory labels only teaches the model noise, and we cannot tell which
    label is right, so both copies go.
    """
    classes_by_digest: dict[str, set[int]] = defaultdict(set)
    digests = [file_sha256(p) for p in split.paths]
    for digest, label in zip(digests, split.labels, strict=True):
        classes_by_digest[digest].add(int(label))
    keep = [len(classes_by_digest[d]) == 1 for d in digests]
    dropped = [str(p) for p, k in zip(split.paths, keep, strict=True) if not k]
    kept = Split([p for p, k in zip(split.paths, keep, strict=True) if k], split.labels[np.array(keep)])
    return kept, dropped


def dataset_digest(root: Path) -> str:
    """sha256 over sorted (relative path, file sha256) of train+val, to pin the exact data."""
    entries = sorted(
        (str(p.relative_to(root)), file_sha256(p))
        for split in ("train", "val")
        for p in (root / split).rglob("*.jpg")
    )
    digest = hashlib.sha256()
    for relative, file_hash in entries:
        digest.update(f"{relative}\t{file_hash}\n".encode())
    return digest.hexdigest()


def load_images(
    paths: list[Path],
    size_wh: tuple[int, int],
    desc: str,
    effect: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Decode+resize all images into one uint8 array (N, H, W, 3), kept in RAM for training."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        images = list(
            tqdm(pool.map(lambda p: load_rgb(p, size_wh, effect), paths), total=len(paths), desc=desc)
        )
    return np.stack(images)


# The cross-source set (glass, metal, plastic photos from elsewhere: ../shared/datasets/drinking-waste-dev).
# A fixed half, chosen by the sha1 of the file name as TrashNet's split is, is never used for any choice
# (recipe, weight interpolation, temperature, threshold): it is the honest figure. The other half
# ("tune") chooses the interpolation and calibrates the confidence across sources.
DEV_LABELS = ("glass", "metal", "plastic")


def dev_part_of(path: Path) -> str:
    digest = hashlib.sha1(path.name.encode()).hexdigest()
    return "heldout" if int(digest[:8], 16) % 2 == 0 else "tune"


def list_dev(root: Path, part: str) -> Split:
    """One part ("tune" or "heldout") of the cross-source dev set, labelled with TrashNet's indices."""
    paths, labels = [], []
    for label in DEV_LABELS:
        found = sorted(p for p in (root / label).iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        if not found:
            raise SystemExit(f"no images in {root / label}; is --dev the drinking-waste-dev folder?")
        chosen = [p for p in found if dev_part_of(p) == part]
        paths += chosen
        labels += [LABELS.index(label)] * len(chosen)
    return Split(paths, np.array(labels, dtype=np.int64))


def list_labelled_folders(folders: list[Path]) -> Split:
    """Photos sorted into DIR/<label>/ (what `recyclex-edge labels export` writes), for the model's labels.

    Other folders (e.g. "none", items a technician marked as no waste) are not a class of the model and
    are skipped, and said so.
    """
    paths, labels = [], []
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"--data {folder} is not a folder")
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            found = sorted(p for p in sub.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
            if sub.name not in LABELS:
                print(
                    f"skipping {len(found)} photos in {sub}: '{sub.name}' is not one of {', '.join(LABELS)}"
                )
                continue
            paths += found
            labels += [LABELS.index(sub.name)] * len(found)
    return Split(paths, np.array(labels, dtype=np.int64))
