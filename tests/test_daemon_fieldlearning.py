"""The whole bin learning its site: replayed photos from a site none of the training data comes from,
a site adaptation taught with `labels import`'s code path, events that name it, items kept for review,
and a dashboard labelling one over a real Mosquitto with the retained state following the backlog."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
from prometheus_client.parser import text_string_to_metric_families

from recyclex_edge.api import METRICS
from recyclex_edge.classifier import Classifier
from recyclex_edge.daemon import Daemon
from recyclex_edge.fieldlearning import FieldLearning
from tests.fieldlearning.test_adaptation import SITE
from tests.mqtt.support import Mosquitto, connect_collector
from tests.test_daemon import bin_config, broker_settings, next_events, run_daemon  # noqa: F401
from tests.test_daemon_mqtt import SCHEMA, command, wait_for

CLASSES = ("glass", "metal", "plastic")


def site_photos(label: str) -> list[Path]:
    return sorted((SITE / label).glob("*.jpg"))


def teach(state_dir: Path, classifier: Classifier, config: Any) -> str:
    """What `recyclex-edge labels import` does, on 5 photos per class; the adaptation's id."""
    site = FieldLearning(config.capture, config.decision, state_dir)
    site.use_classifier(classifier)
    for label in CLASSES:
        for photo in site_photos(label)[:5]:
            site.import_photo(photo, label, by="import")
    result = site.refit()
    site.close()
    assert result.adaptation is not None, result.reason
    return result.adaptation.id


async def test_the_bin_uses_its_site_adaptation_keeps_items_and_takes_labels_over_mqtt(
    tmp_path: Path,
    broker: Mosquitto,
    shipped_classifier: Classifier,
    run_daemon: Any,  # noqa: F811
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, label in enumerate(CLASSES):
        photo = site_photos(label)[20]
        (photos / f"{index:02d}-{label}-{photo.name}").symlink_to(photo)
    config = bin_config(tmp_path, photos, *broker_settings(broker.port, "bin-site"), "capture.sample_rate=1")
    adaptation_id = teach(config.storage.state_dir, shipped_classifier, config)
    prefix = "recyclex/bin-site"
    collector = connect_collector(
        broker, [f"{prefix}/#", "homeassistant/device/bin-site/config"], "dashboard", protocol="5"
    )
    try:
        daemon: Daemon = await run_daemon(config)
        events = await next_events(daemon, 3, timeout_s=120)
        for event in events:
            jsonschema.validate(event, SCHEMA)
            assert event["model"]["adaptation"] == adaptation_id
            assert abs(sum(event["probabilities"].values()) - 1) < 1e-3
        health = daemon.health.snapshot()
        assert adaptation_id in health["adaptation"].detail and "15 labelled" in health["adaptation"].detail
        scraped = text_string_to_metric_families(daemon.app[METRICS].render().decode())
        info = [s for family in scraped for s in family.samples if s.name == "recyclex_model_info"]
        assert [s.labels["adaptation"] for s in info] == [adaptation_id]

        site = daemon.site
        assert site is not None and site.store is not None
        store = site.store
        async with asyncio.timeout(30):
            while len(store.items(labelled=False)) < 3:  # every item kept (sample_rate 1)
                await asyncio.sleep(0.1)
        kept = store.items(labelled=False)[0]
        states = await wait_for(collector, f"{prefix}/state", 1)
        backlog_before = states[-1]["review"]["backlog"]

        answer = await command(collector, prefix, "label", {"event_id": kept.id, "label": "glass"})
        assert answer["ok"] is True and answer["result"] == {"event_id": kept.id, "label": "glass"}, answer
        labelled = store.get(kept.id)
        assert labelled is not None and labelled.label == "glass" and labelled.labelled_by == "mqtt"
        async with asyncio.timeout(30):
            while True:
                state = [m.json() for m in collector.on(f"{prefix}/state")][-1]["review"]
                if state["labelled"] == 16:
                    break
                await asyncio.sleep(0.1)
        assert state["adaptation"] is not None and state["drift"] is False
        assert backlog_before >= 1

        discovery = (await wait_for(collector, "homeassistant/device/bin-site/config", 1))[-1]
        assert "review.backlog" in discovery["cmps"]["bin-site_review_backlog"]["value_template"]

        bad = await command(collector, prefix, "label", {"event_id": kept.id, "label": "bottle"})
        assert bad["ok"] is False and "unknown label 'bottle'" in bad["error"]
        missing = await command(collector, prefix, "label", {"event_id": "01NOSUCHITEM", "label": "glass"})
        assert missing["ok"] is False and "no captured item" in missing["error"]
    finally:
        collector.close()


def test_the_schema_allows_a_null_adaptation() -> None:
    event = json.loads(json.dumps(SCHEMA["properties"]["model"]))
    assert event["properties"]["adaptation"]["type"] == ["string", "null"]
