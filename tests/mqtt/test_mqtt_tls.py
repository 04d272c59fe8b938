"""TLS with a CA the tests generate: the broker verifies our client certificate and we verify the broker."""

from __future__ import annotations

from collections.abc import Callable

from recyclex_edge.health import Status
from tests.mqtt.support import (
    Bin,
    Collector,
    Mosquitto,
    TlsFiles,
    make_event,
    mqtt_config,
    submit,
    wait_until,
)

PREFIX = "recyclex/bin-test"


def test_events_flow_over_mutual_tls(
    tls_broker: Mosquitto,
    tls_files: TlsFiles,
    collector: Callable[..., Collector],
    make_bin: Callable[..., Bin],
) -> None:
    dashboard = collector(tls_broker, [f"{PREFIX}/events"], tls=tls_files)
    tls = {
        "enabled": True,
        "ca_file": str(tls_files.ca_cert),
        "cert_file": str(tls_files.client_cert),
        "key_file": str(tls_files.client_key),
    }
    bin_ = make_bin(mqtt_config(tls_broker.port, tls=tls))
    event_id = submit(bin_.bridge, make_event(0))
    events = dashboard.wait_for(f"{PREFIX}/events", bool, "the event over TLS")
    assert events[0].json()["id"] == event_id
    assert bin_.health.snapshot()["mqtt"].status == Status.OK


def test_a_broker_signed_by_another_ca_is_refused_and_reported(
    tls_broker: Mosquitto, tls_files: TlsFiles, make_bin: Callable[..., Bin]
) -> None:
    tls = {
        "enabled": True,
        "ca_file": str(tls_files.other_ca_cert),
        "cert_file": str(tls_files.client_cert),
        "key_file": str(tls_files.client_key),
    }
    bin_ = make_bin(mqtt_config(tls_broker.port, tls=tls))
    submit(bin_.bridge, make_event(0))

    def reported() -> bool:
        detail = bin_.health.snapshot()["mqtt"].detail
        return "CERTIFICATE_VERIFY_FAILED" in detail or "certificate verify failed" in detail

    wait_until(reported, "a certificate error in the mqtt health detail")
    assert not bin_.bridge.connected
    assert bin_.outbox.depth == 1, "the event waits in the outbox"


def test_missing_tls_files_are_reported_not_raised(
    tls_broker: Mosquitto, make_bin: Callable[..., Bin]
) -> None:
    bin_ = make_bin(mqtt_config(tls_broker.port, tls={"enabled": True, "ca_file": "/nonexistent/ca.pem"}))
    report = bin_.health.snapshot()["mqtt"]
    assert report.status == Status.FAILING and "mqtt.tls" in report.detail
    submit(bin_.bridge, make_event(0))
    assert bin_.outbox.depth == 1
