"""`recyclex-edge labels import/export/stats` and `classify --config`, run as a technician runs them, on
real photos from a site none of the training data comes from, with the real shipped model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fieldlearning.test_adaptation import SITE

CLASSES = ("glass", "metal", "plastic")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recyclex_edge", *args], capture_output=True, text=True, timeout=300
    )


def site_photos(label: str) -> list[Path]:
    return sorted((SITE / label).glob("*.jpg"))


def teach_folder(tmp_path: Path, per_class: int = 5) -> Path:
    folder = tmp_path / "teach"
    for label in CLASSES:
        (folder / label).mkdir(parents=True)
        for photo in site_photos(label)[:per_class]:
            (folder / label / photo.name).symlink_to(photo)
    return folder


def bin_config(tmp_path: Path) -> Path:
    config = tmp_path / "bin.yaml"
    config.write_text(f"storage:\n  state_dir: {tmp_path / 'state'}\n")
    return config


def test_import_refits_and_classify_with_config_decides_as_that_bin(tmp_path: Path) -> None:
    config, teach = bin_config(tmp_path), teach_folder(tmp_path)
    (teach / "glass" / "broken.jpg").write_text("not a photo")

    imported = run_cli("labels", "import", "--config", str(config), str(teach))
    assert imported.returncode == 1, "a bad file is reported and the rest imported"
    assert "broken.jpg: skipped" in imported.stderr
    assert "imported 15 photo(s)" in imported.stdout and "site-" in imported.stdout, imported.stdout

    stats = json.loads(run_cli("labels", "stats", "--config", str(config)).stdout)
    assert stats["counts"] == {"glass": 5, "metal": 5, "plastic": 5} and stats["backlog"] == 0
    adaptation = stats["adaptation"]
    assert adaptation["validation"]["items"] == 15
    validation = adaptation["validation"]
    assert (validation["adapted_top1"], -validation["adapted_log_loss"]) > (
        validation["base_top1"],
        -validation["base_log_loss"],
    ), "used only when it beats the base model on the labelled items"

    held_out = [site_photos(label)[10] for label in CLASSES]
    with_bin = run_cli("classify", "--json", "--config", str(config), *map(str, held_out))
    plain = run_cli("classify", "--json", *map(str, held_out))
    assert with_bin.returncode == 0 and plain.returncode == 0, with_bin.stderr
    bin_lines = [json.loads(line) for line in with_bin.stdout.splitlines()]
    plain_lines = [json.loads(line) for line in plain.stdout.splitlines()]
    for line in bin_lines:
        assert line["model"]["adaptation"] == adaptation["id"]
        assert line["decision"] in (line["class"], "uncertain")
        assert abs(sum(line["probabilities"].values()) - 1) < 1e-4
        if line["confidence"] < adaptation["threshold"]:
            assert line["decision"] == "uncertain", "the bin's recalibrated threshold decides"
    assert all("adaptation" not in line["model"] for line in plain_lines), "without --config, as before"
    assert [b["probabilities"] for b in bin_lines] != [p["probabilities"] for p in plain_lines]


def test_an_unknown_label_folder_is_an_error_naming_the_known_ones(tmp_path: Path) -> None:
    config, teach = bin_config(tmp_path), teach_folder(tmp_path, per_class=1)
    (teach / "bottles").mkdir()
    done = run_cli("labels", "import", "--config", str(config), str(teach))
    assert done.returncode == 2
    assert "bottles" in done.stderr and "cardboard, glass, metal, paper, plastic, trash, none" in done.stderr


def test_export_writes_photos_per_label_and_a_manifest(tmp_path: Path) -> None:
    config, teach = bin_config(tmp_path), teach_folder(tmp_path, per_class=2)
    assert run_cli("labels", "import", "--config", str(config), str(teach)).returncode == 0
    out = tmp_path / "export"
    done = run_cli("labels", "export", "--config", str(config), str(out))
    assert done.returncode == 0, done.stderr
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(m["label"] for m in manifest) == sorted(CLASSES * 2)
    for entry in manifest:
        assert (out / entry["file"]).read_bytes()[:2] == b"\xff\xd8", "a JPEG"
        assert entry["file"] == f"{entry['label']}/{entry['id']}.jpg"
        assert entry["model_version"] and entry["labelled_by"] == "import" and entry["labelled_at"]
        assert set(entry["probabilities"]) >= set(CLASSES)
