"""The adaptation maths: chosen by cross-validation, used only when it beats the base model, stored and
loaded exactly. Real photos from a site none of the training data comes from (the drinking-waste dev
set) through the real shipped model, plus embeddings made here where the model has none yet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recyclex_edge.classifier import Classifier
from recyclex_edge.fieldlearning.adaptation import Adaptation, feature_vectors, fit
from recyclex_edge.imaging import decode_image

LABELS = ("cardboard", "glass", "metal", "paper", "plastic", "trash")
SITE = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "drinking-waste-dev"


def clusters(per_class: int, classes: list[int], *, size: int = 64, spread: float = 0.6, seed: int = 0):
    """Embeddings with one centre per class, and base probabilities that are confidently wrong."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(LABELS), size))
    y = np.repeat(classes, per_class)
    embeddings = centres[y] + spread * rng.normal(size=(len(y), size))
    base = np.full((len(y), len(LABELS)), 0.02)
    base[np.arange(len(y)), (y + 1) % len(LABELS)] = 0.9  # the base model always says the next class
    return [LABELS[i] for i in y], base / base.sum(axis=1, keepdims=True), embeddings.astype(np.float32)


def test_features_are_unit_length_and_fall_back_to_log_probabilities() -> None:
    _labels, base, embeddings = clusters(3, [1, 2])
    assert np.allclose(np.linalg.norm(feature_vectors(base, embeddings), axis=1), 1.0)
    from_probabilities = feature_vectors(base, None)
    assert from_probabilities.shape == base.shape and np.allclose(
        np.linalg.norm(from_probabilities, axis=1), 1
    )


def test_an_adaptation_that_beats_the_base_model_is_used_and_keeps_unseen_classes_to_the_base() -> None:
    labels, base, embeddings = clusters(8, [1, 2, 4])
    result = fit(
        LABELS, labels, base, embeddings, model_sha256="a" * 64, model_version="2.0.0", max_missort_rate=0.1
    )
    adaptation = result.adaptation
    assert adaptation is not None and result.validation is not None
    assert result.validation.base_top1 == 0.0 and result.validation.adapted_top1 >= 0.9
    assert [adaptation.labels[i] for i in adaptation.head.classes] == ["glass", "metal", "plastic"]
    assert "24 labelled: 0 % -> " in adaptation.summary()
    new_labels, new_base, new_embeddings = clusters(5, [1, 2, 4], seed=0)
    site = adaptation.apply(new_base, new_embeddings)
    assert np.allclose(site.sum(axis=1), 1.0)
    assert np.mean(site.argmax(axis=1) == [LABELS.index(n) for n in new_labels]) >= 0.9
    never_labelled = [LABELS.index(n) for n in ("cardboard", "paper", "trash")]
    assert np.allclose(site[:, never_labelled], (1 - adaptation.mix) * new_base[:, never_labelled])


def test_a_base_model_already_right_and_sure_is_kept_and_a_hesitant_one_is_helped() -> None:
    labels, base, embeddings = clusters(6, [1, 2, 4], spread=4.0)  # embeddings that tell little
    truth = [LABELS.index(n) for n in labels]
    sure = np.full_like(base, 0.0002)
    sure[np.arange(len(labels)), truth] = 0.999
    result = fit(
        LABELS, labels, sure, embeddings, model_sha256="a" * 64, model_version="2", max_missort_rate=0.1
    )
    assert result.adaptation is None and "not beaten" in result.reason
    assert result.validation is not None and result.validation.base_top1 == 1.0

    # Right on every labelled item but hesitant (0.5 against 0.1 each), and embeddings that separate the
    # classes well: as many right, with a lower log-loss.
    labels, base, embeddings = clusters(6, [1, 2, 4])
    hesitant = np.full_like(base, 0.1)
    hesitant[np.arange(len(labels)), truth] = 0.5
    helped = fit(
        LABELS, labels, hesitant, embeddings, model_sha256="a" * 64, model_version="2", max_missort_rate=0.1
    )
    assert helped.adaptation is not None and helped.validation is not None
    assert helped.validation.adapted_top1 == helped.validation.base_top1 == 1.0
    assert helped.validation.adapted_log_loss < helped.validation.base_log_loss


def test_too_few_labels_or_one_class_fit_nothing() -> None:
    labels, base, embeddings = clusters(2, [1, 2])
    few = fit(
        LABELS, labels, base, embeddings, model_sha256="a" * 64, model_version="2", max_missort_rate=0.1
    )
    assert few.adaptation is None and "6 needed" in few.reason
    labels, base, embeddings = clusters(8, [1])
    one = fit(
        LABELS, labels, base, embeddings, model_sha256="a" * 64, model_version="2", max_missort_rate=0.1
    )
    assert one.adaptation is None and "two classes" in one.reason


def test_not_waste_labels_are_left_out_of_the_fit() -> None:
    labels, base, embeddings = clusters(8, [1, 2])
    labels[0] = "none"
    result = fit(
        LABELS, labels, base, embeddings, model_sha256="a" * 64, model_version="2", max_missort_rate=0.1
    )
    assert result.validation is not None and result.validation.items == 15


def test_stored_and_loaded_it_judges_identically(tmp_path: Path) -> None:
    labels, base, embeddings = clusters(8, [0, 3, 5])
    adaptation = fit(
        LABELS, labels, base, embeddings, model_sha256="b" * 64, model_version="2", max_missort_rate=0.1
    ).adaptation
    assert adaptation is not None
    adaptation.save(tmp_path / "adaptation.npz")
    loaded = Adaptation.load(tmp_path / "adaptation.npz")
    assert (
        loaded.id == adaptation.id
        and loaded.model_sha256 == "b" * 64
        and loaded.threshold == adaptation.threshold
    )
    np.testing.assert_array_equal(loaded.apply(base, embeddings), adaptation.apply(base, embeddings))
    assert not loaded.accepts(None) and not loaded.accepts(np.zeros(3)) and loaded.accepts(embeddings[0])


@pytest.fixture(scope="module")
def site_photos(shipped_classifier: Classifier) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The shipped model's probabilities and embeddings on every photo of the drinking-waste dev set."""
    if not SITE.is_dir():
        pytest.fail(f"the drinking-waste dev set is missing at {SITE}")
    assert shipped_classifier.card.embedding is not None, "the shipped model declares an embedding"
    labels, rows, embeddings = [], [], []
    for folder in sorted(p for p in SITE.iterdir() if p.is_dir()):
        for photo in sorted(folder.glob("*.jpg")):
            result = shipped_classifier.classify(decode_image(photo.read_bytes()))
            rows.append([result.probabilities[name] for name in shipped_classifier.labels])
            embeddings.append(result.embedding)
            labels.append(folder.name)
    return labels, np.array(rows), np.array(embeddings)


def test_five_labelled_photos_per_class_lift_a_new_site_above_the_base_model(site_photos) -> None:
    """Taught 5 photos per class from a site none of the training data comes from, scored on the rest."""
    labels, probabilities, embeddings = site_photos
    truth = np.array(labels)
    base, lifted = [], []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        taught = np.concatenate(
            [rng.choice(np.flatnonzero(truth == c), 5, replace=False) for c in np.unique(truth)]
        )
        rest = np.setdiff1d(np.arange(len(truth)), taught)
        result = fit(
            LABELS,
            list(truth[taught]),
            probabilities[taught],
            embeddings[taught],
            model_sha256="c" * 64,
            model_version="2.0.0",
            max_missort_rate=0.1,
            seed=seed,
        )
        assert result.adaptation is not None, result.reason
        assert result.adaptation.uses_embedding
        site = result.adaptation.apply(probabilities[rest], embeddings[rest])
        lifted.append(float(np.mean(np.array(LABELS)[site.argmax(axis=1)] == truth[rest])))
        base.append(float(np.mean(np.array(LABELS)[probabilities[rest].argmax(axis=1)] == truth[rest])))
    assert np.mean(lifted) >= 0.85 and np.mean(lifted) >= np.mean(base) + 0.03, (base, lifted)
    assert min(lifted) > min(base), (base, lifted)


def test_without_an_embedding_the_log_probabilities_still_adapt(site_photos) -> None:
    """A model without an embedding output: re-weighing its probabilities per site is all there is."""
    labels, probabilities, _ = site_photos
    truth = np.array(labels)
    rng = np.random.default_rng(0)
    taught = np.concatenate(
        [rng.choice(np.flatnonzero(truth == c), 8, replace=False) for c in np.unique(truth)]
    )
    result = fit(
        LABELS,
        list(truth[taught]),
        probabilities[taught],
        None,
        model_sha256="c" * 64,
        model_version="2.0.0",
        max_missort_rate=0.1,
    )
    assert result.validation is not None and result.validation.items == 24
    if result.adaptation is not None:
        assert not result.adaptation.uses_embedding
        assert result.adaptation.apply(probabilities[:3], None).shape == (3, len(LABELS))
