"""The classifier engine on the real shipped model and real TrashNet photos."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from recyclex_edge.classifier import Classifier
from recyclex_edge.errors import ModelError
from recyclex_edge.model_card import SHIPPED_MODEL, card_path_for, load_card, sha256_of
from tests.conftest import dev_photos, val_photos

LABELS = ("cardboard", "glass", "metal", "paper", "plastic", "trash")


def read(path: Path) -> np.ndarray:
    frame = cv2.imread(str(path))
    assert frame is not None, path
    return frame


def copy_model(tmp_path: Path) -> Path:
    model = tmp_path / SHIPPED_MODEL.name
    shutil.copy(SHIPPED_MODEL, model)
    shutil.copy(card_path_for(SHIPPED_MODEL), card_path_for(model))
    return model


def edit_card(model: Path, **changes: object) -> None:
    card_file = card_path_for(model)
    card = json.loads(card_file.read_text())
    card.update(changes)
    card_file.write_text(json.dumps(card))


def test_card_matches_the_shipped_model(shipped_classifier: Classifier) -> None:
    card = shipped_classifier.card
    assert card.sha256 == sha256_of(SHIPPED_MODEL)
    assert card.labels == LABELS
    assert card.file == SHIPPED_MODEL.name
    details = shipped_classifier._idle.queue[0].interpreter.get_input_details()[0]
    assert list(details["shape"]) == [1, card.input.height, card.input.width, 3]
    assert np.dtype(details["dtype"]).name == card.input.dtype == "uint8"
    assert SHIPPED_MODEL.stat().st_size <= 12 * 1024 * 1024, "the model issue caps it at 12 MB"
    output_types = {
        np.dtype(d["dtype"]).name for d in shipped_classifier._idle.queue[0].interpreter.get_output_details()
    }
    assert output_types == {"int8"}, "full-integer int8, outputs included"


def test_the_embedding_output_is_declared_and_delivered(shipped_classifier: Classifier) -> None:
    card = shipped_classifier.card
    assert card.embedding is not None, "site adaptation needs the pooled embedding"
    first, second = (shipped_classifier.classify(read(val_photos(label)[0])) for label in ("glass", "paper"))
    for result in (first, second):
        assert result.embedding is not None and result.embedding.shape == (card.embedding.size,)
        assert np.isfinite(result.embedding).all() and result.embedding.std() > 0
    assert first.embedding is not None and second.embedding is not None
    assert not np.array_equal(first.embedding, second.embedding)


@pytest.mark.parametrize("part", ["heldout", "tune"])
def test_dev_accuracy_is_what_the_card_claims(shipped_classifier: Classifier, part: str) -> None:
    """Photos from another source, through the engine: no worse than the card says, give or take 2 points."""
    photos = dev_photos(part)
    claimed = shipped_classifier.card.metrics["dev"][part]
    assert len(photos) == claimed["n"]
    right = sum(shipped_classifier.classify(read(photo)).label == label for label, photo in photos)
    assert right / len(photos) >= claimed["top1"] - 0.02, f"dev {part} {right / len(photos):.4f} vs {claimed}"


@pytest.fixture(scope="module")
def val_results(shipped_classifier: Classifier, dataset_val: Path) -> list[tuple[str, str, float]]:
    """(true label, predicted label, confidence) for every val photo, through the engine."""
    results = []
    for photo in val_photos():
        result = shipped_classifier.classify(read(photo))
        results.append((photo.parent.name, result.label, result.confidence))
    return results


def test_val_accuracy_is_what_the_card_claims(
    shipped_classifier: Classifier, val_results: list[tuple[str, str, float]]
) -> None:
    assert len(val_results) == 256
    top1 = sum(truth == predicted for truth, predicted, _ in val_results) / len(val_results)
    claimed = float(shipped_classifier.card.metrics["top1"])
    assert top1 >= claimed - 0.01, f"engine top-1 {top1:.4f} vs card {claimed:.4f}"


def test_threshold_coverage_and_missorts_are_what_the_card_claims(
    shipped_classifier: Classifier, val_results: list[tuple[str, str, float]]
) -> None:
    decision = shipped_classifier.card.decision
    accepted = [(t, p) for t, p, confidence in val_results if confidence >= decision.threshold]
    coverage = len(accepted) / len(val_results)
    missorts = sum(t != p for t, p in accepted) / max(len(accepted), 1)
    assert decision.coverage is not None and decision.missort_rate is not None
    assert coverage >= decision.coverage - 0.01, f"coverage {coverage:.4f} vs card {decision.coverage}"
    assert missorts <= decision.missort_rate + 0.01, (
        f"mis-sorts {missorts:.4f} vs card {decision.missort_rate}"
    )


def test_result_carries_everything_a_caller_needs(shipped_classifier: Classifier) -> None:
    result = shipped_classifier.classify(read(val_photos("paper")[0]))
    assert set(result.probabilities) == set(LABELS)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.confidence == max(result.probabilities.values())
    assert result.probabilities[result.label] == result.confidence
    assert result.model_name == shipped_classifier.card.name
    assert result.model_version == shipped_classifier.card.version
    assert result.inference_ms > 0 and result.preprocess_ms > 0


def test_camera_sized_frames_and_photos_agree(shipped_classifier: Classifier) -> None:
    """A 640x480 camera frame of the same scene gives the same answer as the 512x384 photo."""
    photo = read(val_photos("cardboard")[1])
    camera_frame = cv2.resize(photo, (640, 480), interpolation=cv2.INTER_LINEAR)
    a, b = shipped_classifier.classify(photo), shipped_classifier.classify(camera_frame)
    assert a.label == b.label
    assert abs(a.confidence - b.confidence) < 0.1


def test_batch_and_threads_give_the_same_answers(shipped_classifier: Classifier) -> None:
    frames = [read(path) for path in val_photos()[::16]]
    sequential = [shipped_classifier.classify(frame) for frame in frames]
    batch = shipped_classifier.classify_batch(frames)
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(shipped_classifier.classify, frames))
    for one, two, three in zip(sequential, batch, threaded, strict=True):
        assert one.label == two.label == three.label
        assert one.probabilities == two.probabilities == three.probabilities


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        Classifier(tmp_path / "absent.tflite")


def test_missing_card(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    card_path_for(model).unlink()
    with pytest.raises(ModelError, match=r"card .* is missing"):
        Classifier(model)


def test_card_that_is_not_json(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    card_path_for(model).write_text("{not json")
    with pytest.raises(ModelError, match="cannot be read as JSON"):
        Classifier(model)


def test_card_with_wrong_fields(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    edit_card(model, input={"width": 224})
    with pytest.raises(ModelError, match=r"invalid: input\.height"):
        Classifier(model)


def test_sha256_mismatch(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its card"):
        Classifier(model)


def test_corrupt_model_with_a_matching_card(tmp_path: Path) -> None:
    """A card re-signed over garbage must still stop start-up: the runtime itself refuses it."""
    model = copy_model(tmp_path)
    model.write_bytes(b"TFL3" + bytes(4096))
    edit_card(model, sha256=sha256_of(model))
    with pytest.raises(ModelError, match="cannot be loaded"):
        Classifier(model)


def test_label_count_must_match_outputs(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    edit_card(model, labels=[*LABELS, "ewaste"])
    with pytest.raises(ModelError, match=r"outputs have sizes \[.*6.*\] but its card expects \[7"):
        Classifier(model)


def test_declared_embedding_must_exist(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    card = json.loads(card_path_for(model).read_text())
    size = card["embedding"]["size"] + 8 if card.get("embedding") else 1280
    edit_card(model, embedding={"size": size})
    with pytest.raises(ModelError, match=f"an embedding of {size}"):
        Classifier(model)


def test_input_size_must_match_the_card(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    card = json.loads(card_path_for(model).read_text())
    edit_card(model, input={**card["input"], "width": 256, "height": 256})
    with pytest.raises(ModelError, match="input shape"):
        Classifier(model)


def test_load_card_alone_checks_the_hash(tmp_path: Path) -> None:
    model = copy_model(tmp_path)
    assert load_card(model).sha256 == sha256_of(model)
