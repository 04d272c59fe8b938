"""FieldLearning as the pipeline and the API use it, on the real shipped model and real photos:
what is kept, health while the store fails, labels that refit (debounced, in the background), the
adaptation surviving a restart and being refitted for another model."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from recyclex_edge.classifier import Classifier
from recyclex_edge.config import load_config
from recyclex_edge.decision import UNCERTAIN
from recyclex_edge.errors import RecycleXError
from recyclex_edge.fieldlearning import FieldLearning
from recyclex_edge.fieldlearning.adaptation import Adaptation
from recyclex_edge.fieldlearning.site import ADAPTATION_FILE
from recyclex_edge.health import HealthRegistry, Status
from recyclex_edge.ids import new_event_id
from recyclex_edge.imaging import decode_image
from tests.conftest import val_photos
from tests.fieldlearning.test_adaptation import SITE


def open_site(tmp_path: Path, classifier: Classifier, *overrides: str, health: HealthRegistry | None = None):
    config = load_config(None, [f"storage.state_dir={tmp_path / 'state'}", *overrides], environ={})
    site = FieldLearning(
        config.capture, config.decision, config.storage.state_dir, health=health, rng=random.Random(1)
    )
    site.use_classifier(classifier)
    return site


def deposit(site: FieldLearning, photo: Path) -> dict:
    """What the pipeline does with one item: judge, decide, make the event, hand it over."""
    frame = decode_image(photo.read_bytes())
    judged, decision = site.judge_classification([frame, frame])
    event = {
        "id": new_event_id(),
        "class": judged.verdict.label,
        "confidence": judged.verdict.confidence,
        "probabilities": judged.verdict.probabilities,
        "decision": decision,
        "model": {"name": "m", "version": "1.1.0", "adaptation": judged.adaptation_id},
    }
    site.observe(event, [frame, frame], judged)
    return event


def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_uncertain_items_are_kept_and_accepted_ones_sampled(tmp_path: Path, shipped_classifier) -> None:
    health = HealthRegistry()
    site = open_site(tmp_path, shipped_classifier, "capture.sample_rate=0", health=health)
    site.start()
    try:
        events = [deposit(site, photo) for label in ("glass", "plastic") for photo in val_photos(label)[:8]]
        uncertain = [e["id"] for e in events if e["decision"] == UNCERTAIN]
        assert uncertain and len(uncertain) < len(events), "the photos give both kinds"
        store = site.store
        assert store is not None
        wait_for(lambda: store.usage().items == len(uncertain))
        assert sorted(i.id for i in store.items(limit=100)) == sorted(uncertain)
        kept = store.get(uncertain[0])
        assert kept is not None and kept.reason == "uncertain" and (kept.width, kept.height) == (512, 384)
        assert decode_image(store.image(uncertain[0]) or b"").shape == (384, 512, 3), "camera resolution"
        component = health.snapshot()["capture"]
        assert component.status is Status.OK and f"{len(uncertain)} item(s) kept" in component.detail
    finally:
        site.close()

    everything = open_site(tmp_path / "all", shipped_classifier, "capture.sample_rate=1")
    everything.start()
    try:
        for photo in val_photos("metal")[:4]:
            deposit(everything, photo)
        assert everything.store is not None
        wait_for(lambda: everything.store is not None and everything.store.usage().items == 4)
    finally:
        everything.close()


def test_a_full_store_degrades_health_and_never_raises_into_the_pipeline(
    tmp_path: Path, shipped_classifier
) -> None:
    health = HealthRegistry()
    health.report("classifier", Status.OK, "shipped model")
    site = open_site(tmp_path, shipped_classifier, "capture.sample_rate=1", health=health)
    site.start()
    try:
        store = site.store
        assert store is not None
        deposit(site, val_photos("glass")[0])
        wait_for(lambda: store.usage().items == 1)
        (pages,) = store._db.execute("PRAGMA page_count").fetchone()
        store._db.execute(f"PRAGMA max_page_count={pages}")  # SQLITE_FULL from now on
        for photo in val_photos("glass")[1:41]:
            deposit(site, photo)  # never raises
            time.sleep(0.05)  # let the writer keep up (a full queue drops items, which is not the point here)
            if health.snapshot()["capture"].status is Status.DEGRADED:
                break
        detail = health.snapshot()["capture"].detail
        assert "full" in detail and "sorting continues" in detail
        assert health.overall() is Status.DEGRADED, "amber, never red: the bin sorts on"
        store._db.execute("PRAGMA max_page_count=1073741823")
        deposit(site, val_photos("glass")[20])
        wait_for(lambda: health.snapshot()["capture"].status is Status.OK)
    finally:
        site.close()


def test_a_store_that_cannot_open_degrades_and_is_tried_again(tmp_path: Path, shipped_classifier) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "captures").write_text("a file where the folder should be")
    health = HealthRegistry()
    site = open_site(tmp_path, shipped_classifier, health=health)
    assert site.store is None and health.snapshot()["capture"].status is Status.DEGRADED
    deposit(site, val_photos("glass")[0])  # sorting goes on
    with pytest.raises(RecycleXError, match="not available"):
        site.set_label("01ANY", "glass", by="t")
    (tmp_path / "state" / "captures").unlink()
    site.housekeeping()
    assert site.store is not None and health.snapshot()["capture"].status is Status.OK
    site.close()


def teach(site: FieldLearning, per_class: int = 5) -> list[str]:
    ids = []
    for label in ("glass", "metal", "plastic"):
        for photo in sorted((SITE / label).glob("*.jpg"))[:per_class]:
            ids.append(site.import_photo(photo, label, by="test"))
    return ids


def test_labels_refit_in_the_background_and_the_adaptation_survives_a_restart(
    tmp_path: Path, shipped_classifier
) -> None:
    health = HealthRegistry()
    site = open_site(tmp_path, shipped_classifier, "capture.adaptation.refit_delay_s=0.3", health=health)
    told: list[tuple[str, str]] = []
    site.on_label = lambda event_id, label: told.append((event_id, label))
    site.start()
    try:
        ids = teach(site)
        # Labels set as the Review page sets them: a wrong one, then corrected.
        site.set_label(ids[0], "metal", by="token:alice")
        site.set_label(ids[0], "glass", by="token:alice")
        wait_for(lambda: site.adaptation is not None)
        adaptation = site.adaptation
        assert adaptation is not None and "15 labelled" in adaptation.summary()
        assert "in use" in health.snapshot()["adaptation"].detail
        photo = sorted((SITE / "glass").glob("*.jpg"))[30]
        judged, _ = site.judge_classification([decode_image(photo.read_bytes())])
        assert (
            judged.adaptation_id == adaptation.id
            and judged.verdict.probabilities != judged.base.probabilities
        )
        with pytest.raises(RecycleXError, match="unknown label 'bottle'"):
            site.set_label(ids[1], "bottle", by="t")
        with pytest.raises(LookupError):
            site.set_label("01NOSUCHITEM", "glass", by="t")
        assert [i.event_id for i in site.labelled_items()] == ids, "the read-only view for other rooms"
        assert told == [(ids[0], "metal"), (ids[0], "glass")], "the registry's shadow tally is told"
    finally:
        site.close()

    again = open_site(tmp_path, shipped_classifier)
    assert again.adaptation is not None and again.adaptation.id == adaptation.id, "loaded, not refitted"
    again.close()


def test_another_model_re_embeds_the_labelled_photos_and_refits(tmp_path: Path, shipped_classifier) -> None:
    site = open_site(tmp_path, shipped_classifier)
    teach(site)
    first = site.refit().adaptation
    assert first is not None and site.store is not None
    site.close()
    # As if the file had been fitted for another model: its features and its adaptation no longer fit.
    path = tmp_path / "state" / "captures" / ADAPTATION_FILE
    stored = Adaptation.load(path)
    Adaptation(**{**stored.__dict__, "model_sha256": "0" * 64}).save(path)
    db = sqlite3.connect(tmp_path / "state" / "captures" / "captures.sqlite3")
    with db:
        db.execute("UPDATE features SET model_sha256 = ?", ("0" * 64,))
    db.close()

    again = open_site(tmp_path, shipped_classifier)
    assert again.adaptation is None, "an adaptation for another model is not used"
    result = again.refit()
    assert result.adaptation is not None and result.adaptation.model_sha256 == shipped_classifier.card.sha256
    assert result.adaptation.id == first.id, "re-embedded from the stored photos, the same fit"
    store = again.store
    assert store is not None
    assert len(store.features(shipped_classifier.card.sha256, [i.id for i in store.labelled()])) == 15
    np.testing.assert_allclose(result.adaptation.head.weights, first.head.weights, atol=1e-5)
    again.close()


def test_a_running_bin_picks_up_labels_imported_beside_it(tmp_path: Path, shipped_classifier) -> None:
    running = open_site(tmp_path, shipped_classifier)
    assert running.adaptation is None
    command_line = open_site(tmp_path, shipped_classifier)  # `recyclex-edge labels import` meanwhile
    teach(command_line)
    fitted = command_line.refit().adaptation
    command_line.close()
    assert fitted is not None
    running.housekeeping()
    assert running.adaptation is not None and running.adaptation.id == fitted.id
    running.close()
