"""`recyclex-edge classify`: the JSON lines other tools read, and errors that do not stop the batch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from recyclex_edge.model_card import SHIPPED_MODEL, card_path_for
from tests.conftest import val_photos

FIELDS = {"path", "class", "confidence", "probabilities", "inference_ms", "decision", "model"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recyclex_edge", *args], capture_output=True, text=True, timeout=120
    )


def test_classify_json_on_a_folder_with_bad_files(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    glass, metal = val_photos("glass")[0], val_photos("metal")[0]
    shutil.copy(glass, photos / glass.name)
    shutil.copy(metal, photos / "nested" / metal.name)
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("this is text pretending to be a photo")
    missing = tmp_path / "gone.jpg"

    completed = run_cli("classify", "--json", str(photos), str(not_an_image), str(missing))
    card = json.loads(card_path_for(SHIPPED_MODEL).read_text())

    assert completed.returncode == 1, completed.stderr
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    assert len(lines) == 4
    good = [line for line in lines if "error" not in line]
    bad = {line["path"]: line for line in lines if "error" in line}
    assert {line["path"] for line in good} == {str(photos / glass.name), str(photos / "nested" / metal.name)}
    for line in good:
        assert set(line) == FIELDS
        assert line["class"] in line["probabilities"]
        assert abs(sum(line["probabilities"].values()) - 1) < 1e-3
        assert line["model"] == {"name": card["name"], "version": card["version"]}
        # Exactly the bin's rule: the class when its confidence reaches the card's threshold.
        accepted = line["confidence"] >= card["decision"]["threshold"]
        assert line["decision"] == (line["class"] if accepted else "uncertain")
    assert set(bad) == {str(not_an_image), str(missing)}
    assert all(set(line) == {"path", "error"} for line in bad.values())
    assert "not a JPEG or PNG" in bad[str(not_an_image)]["error"]


def test_classify_all_good_exits_zero_with_readable_lines() -> None:
    photo = val_photos("plastic")[0]
    completed = run_cli("classify", str(photo))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"{photo}: ")
    assert completed.stderr == "", "an operator's tool prints no runtime chatter (XNNPACK INFO lines)"


def test_classify_json_reports_uncertain_when_below_the_threshold(tmp_path: Path) -> None:
    """A model whose card demands certainty says `uncertain` rather than guess."""
    model = tmp_path / SHIPPED_MODEL.name
    shutil.copy(SHIPPED_MODEL, model)
    card = json.loads(card_path_for(SHIPPED_MODEL).read_text())
    card["decision"]["threshold"] = 1.0
    card_path_for(model).write_text(json.dumps(card))
    completed = run_cli("classify", "--json", "--model", str(model), str(val_photos("cardboard")[0]))
    assert completed.returncode == 0, completed.stderr
    line = json.loads(completed.stdout)
    assert line["confidence"] < 1.0 and line["decision"] == "uncertain"


def test_classify_with_a_missing_model_says_so(tmp_path: Path) -> None:
    completed = run_cli("classify", "--model", str(tmp_path / "nope.tflite"), str(val_photos("paper")[0]))
    assert completed.returncode == 3
    assert "does not exist" in completed.stderr


def test_check_config_reports_problems_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("http:\n  port: not-a-port\n")
    completed = run_cli("check-config", str(config))
    assert completed.returncode == 2
    assert f"{config}:2: http.port" in completed.stderr
