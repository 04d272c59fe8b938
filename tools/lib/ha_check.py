"""Run a real Home Assistant Core against the demo bin and fail on anything it logs about our payloads.

Started by tools/ha-check with the project's .venv (paho-mqtt, aiohttp and recyclex_edge are there);
`--hass` is the `hass` of a separate venv that holds Home Assistant. Everything listens on 127.0.0.1,
on free ports. Each scenario of issue 16 is a step below; every wait ends (`--timeout-s` in all), and
every process started here is stopped in `finally`, on SIGTERM, SIGINT and SIGHUP too.

Home Assistant is asked through its own REST and websocket APIs (as an admin user made with
`hass --script auth`), so what is checked is what its MQTT integration made of our discovery message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO.parent / "shared" / "datasets" / "trashnet" / "val"
DEVICE_ID = "demo-bin"  # config/demo.yaml's
PREFIX = f"recyclex/{DEVICE_ID}"
DISCOVERY_PREFIX = "homeassistant"
# What configuration.yaml loads, and nothing else (no default_config: it pulls in dozens).
# `auth` and `config` are there for the check's own questions (a token; the device and entity registries).
INTEGRATIONS = ("http", "api", "websocket_api", "auth", "config", "logger", "mqtt")
# The entity platforms our discovery message uses: their requirements are installed up front too.
PLATFORMS = ("sensor", "select", "button")
OBSERVER = "ha-check-observer"
OUR_CLIENTS = {OBSERVER, f"recyclex-{DEVICE_ID}"}  # the check's own client and the bin's
USERNAME = "ha-check"
PASSWORD = "ha-check-" + uuid.uuid4().hex

# Home Assistant log lines that concern us: its MQTT integration, templates, entities and the entity
# platforms our payloads use, or anything that names the bin.
OURS_LOGGER = re.compile(
    r"^homeassistant\.(components\.(mqtt|sensor|select|button)|helpers\.(template|entity|entity_platform))\b"
)
OURS_TEXT = re.compile(r"demo[-_]bin|recyclex", re.IGNORECASE)
# Warnings known to have nothing to do with the bin, each with the reason it is tolerated. Anything
# else at WARNING or above fails the check, ours or not: a new warning gets a look before a pass.
TOLERATED: list[tuple[str, str, str]] = [
    (
        r"homeassistant\.bootstrap$",
        r"^Skipping pip installation of required modules",
        "--skip-pip is the check's choice: tools/ha-check installed every requirement beforehand",
    ),
    (
        r"homeassistant\.bootstrap$",
        r"^Support for the running Python version 3\.11\.\d+ is deprecated",
        "Home Assistant 2024.3 on Python 3.11 is the issue's own older pairing, chosen on purpose",
    ),
    (
        r"aiohttp_fast_zlib$",
        r"zlib_ng and isal are not available",
        "optional compression speed-ups of Home Assistant's HTTP server, not installed here",
    ),
    (
        r"homeassistant\.components\.camera\.img_util$",
        r"^Error loading libturbojpeg",
        "the camera integration's JPEG speed-up needs a system libturbojpeg; we have no camera entity",
    ),
]


class CheckError(Exception):
    """A step found Home Assistant or the bin not as they should be."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def say(message: str) -> None:
    print(f"ha-check: {message}", flush=True)


# -- processes ---------------------------------------------------------------------------------------------


@dataclass
class Process:
    """A child in its own process group, its output in a log file, stopped with SIGTERM then SIGKILL."""

    name: str
    argv: list[str]
    log: Path
    cwd: Path = REPO
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        say(f"starting {self.name} (log: {self.log})")
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                ["nice", "-n", "10", *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                say(f"{self.name} did not stop within {timeout_s:.0f} s: SIGKILL")
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self.popen = None


# -- MQTT: what is on the broker, and publishing as Home Assistant would -----------------------------------


@dataclass
class Broker:
    """A recording client on the check's Mosquitto."""

    port: int
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=OBSERVER)
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload), m.retain))
        self.client.connect("127.0.0.1", self.port)
        self.client.subscribe([(f"{PREFIX}/#", 1), (f"{DISCOVERY_PREFIX}/#", 1)])
        self.client.loop_start()

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _ in list(self.messages) if t == topic]

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- Home Assistant -----------------------------------------------------------------------------------------


def write_config(config_dir: Path, http_port: int, broker_port: int) -> None:
    """configuration.yaml with only what the check needs, and the MQTT config entry (not settable in YAML)."""
    integrations = "\n".join(f"{domain}:" for domain in INTEGRATIONS if domain not in ("http", "logger"))
    (config_dir / "configuration.yaml").write_text(
        f"""homeassistant:
  name: ha-check
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: NL
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {http_port}
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: warning
    homeassistant.helpers.template: warning
{integrations}
"""
    )
    storage = config_dir / ".storage"
    storage.mkdir()
    entry = {
        "entry_id": uuid.uuid4().hex,
        "domain": "mqtt",
        "title": "ha-check broker",
        # Version 1.1: broker and discovery settings together in `data`; newer releases migrate them.
        "data": {
            "broker": "127.0.0.1",
            "port": broker_port,
            "discovery": True,
            "discovery_prefix": DISCOVERY_PREFIX,
        },
        "options": {},
        "source": "user",
        "version": 1,
        "minor_version": 1,
        "unique_id": None,
        "disabled_by": None,
        "pref_disable_new_entities": False,
        "pref_disable_polling": False,
    }
    # Storage 1.1 as well: every release since 2021 migrates it to its own layout.
    document = {"version": 1, "minor_version": 1, "key": "core.config_entries", "data": {"entries": [entry]}}
    (storage / "core.config_entries").write_text(json.dumps(document, indent=2))
    # Onboarding done: until it is, Home Assistant refuses logins (the check's user comes from
    # `hass --script auth`, not from the onboarding's first page).
    onboarding = {"user", "core_config", "analytics", "integration"}
    document = {"version": 4, "minor_version": 1, "key": "onboarding", "data": {"done": sorted(onboarding)}}
    (storage / "onboarding").write_text(json.dumps(document, indent=2))


class HomeAssistant:
    """Home Assistant's REST and websocket APIs, as the admin user the check created."""

    def __init__(self, port: int, session: aiohttp.ClientSession) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = session
        self.token = ""
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._next_id = 1

    async def up(self) -> bool:
        """Whether its HTTP server answers (401: no token yet, which is the answer expected)."""
        try:
            async with self.session.get(f"{self.base}/auth/providers") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def log_in(self) -> None:
        client_id = f"{self.base}/"
        async with self.session.post(
            f"{self.base}/auth/login_flow",
            json={"client_id": client_id, "handler": ["homeassistant", None], "redirect_uri": client_id},
        ) as response:
            flow = await response.json()
        async with self.session.post(
            f"{self.base}/auth/login_flow/{flow['flow_id']}",
            json={"client_id": client_id, "username": USERNAME, "password": PASSWORD},
        ) as response:
            result = await response.json()
        if result.get("type") != "create_entry":
            raise CheckError(f"could not log in to Home Assistant: {result}")
        async with self.session.post(
            f"{self.base}/auth/token",
            data={"grant_type": "authorization_code", "code": result["result"], "client_id": client_id},
        ) as response:
            self.token = (await response.json())["access_token"]
        self._ws = await self.session.ws_connect(f"{self.base}/api/websocket")
        await self._ws.receive_json()  # auth_required
        await self._ws.send_json({"type": "auth", "access_token": self.token})
        answer = await self._ws.receive_json()
        if answer.get("type") != "auth_ok":
            raise CheckError(f"Home Assistant's websocket refused the token: {answer}")

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def ws(self, command: str) -> Any:
        assert self._ws is not None
        message_id, self._next_id = self._next_id, self._next_id + 1
        await self._ws.send_json({"id": message_id, "type": command})
        while True:
            answer = await self._ws.receive_json()
            if answer.get("id") == message_id:
                if not answer.get("success"):
                    raise CheckError(f"websocket {command} failed: {answer}")
                return answer["result"]

    async def states(self) -> dict[str, str]:
        async with self.session.get(
            f"{self.base}/api/states", headers={"Authorization": f"Bearer {self.token}"}
        ) as response:
            return {state["entity_id"]: state["state"] for state in await response.json()}

    async def service(self, domain: str, service: str, data: dict[str, Any]) -> None:
        async with self.session.post(
            f"{self.base}/api/services/{domain}/{service}",
            headers={"Authorization": f"Bearer {self.token}"},
            json=data,
        ) as response:
            if response.status != 200:
                raise CheckError(f"{domain}.{service} {data}: HTTP {response.status} {await response.text()}")


# -- the log ----------------------------------------------------------------------------------------------

LOG_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? (?P<level>[A-Z]+) \((?P<thread>[^)]*)\) "
    r"\[(?P<logger>[^\]]+)\] (?P<message>.*)$"
)


@dataclass
class Record:
    level: str
    logger: str
    text: str  # the first line's message and any continuation lines (a traceback)


def log_records(log: Path) -> Iterator[Record]:
    current: Record | None = None
    for line in log.read_text(errors="replace").splitlines():
        match = LOG_RECORD.match(line)
        if match:
            if current is not None:
                yield current
            current = Record(match["level"], match["logger"], match["message"])
        elif current is not None:
            current.text += "\n" + line
    if current is not None:
        yield current


@dataclass
class Scan:
    failing: list[Record] = field(default_factory=list)
    tolerated: list[tuple[Record, str]] = field(default_factory=list)
    canaries: list[Record] = field(default_factory=list)


def scan_log(log: Path) -> Scan:
    """Every WARNING and above: the canaries', the tolerated ones (with the reason) and the failing ones."""
    scan = Scan()
    for record in log_records(log):
        if record.level not in ("WARNING", "ERROR", "CRITICAL"):
            continue
        if CANARY in record.text:
            scan.canaries.append(record)
            continue
        ours = bool(OURS_LOGGER.match(record.logger) or OURS_TEXT.search(record.text))
        reason = next(
            (
                why
                for logger, text, why in TOLERATED
                if re.match(logger, record.logger) and re.search(text, record.text)
            ),
            None,
        )
        if reason is None or ours:
            scan.failing.append(record)
        else:
            scan.tolerated.append((record, reason))
    return scan


# -- the check ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    dir: Path
    broker_port: int = field(default_factory=free_port)
    ha_port: int = field(default_factory=free_port)
    bin_port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)

    @property
    def ha_config(self) -> Path:
        return self.dir / "ha-config"

    def bin_process(self) -> Process:
        overrides = [
            f"camera.source=replay:{self.dir / 'photos'}",
            "camera.replay.order=sorted",
            "camera.replay.empty_s=0.6",
            "camera.replay.dwell_s=2.0",
            "mqtt.enabled=true",
            "mqtt.host=127.0.0.1",
            f"mqtt.port={self.broker_port}",
            "mqtt.reconnect.min_delay_s=1",
            "mqtt.reconnect.max_delay_s=1",
            "mqtt.stats_interval_s=5",
            f"http.port={self.bin_port}",
            f"storage.state_dir={self.dir / 'bin-state'}",
            "logging.level=INFO",
            f"mqtt.discovery.per_entity={str(self.args.per_entity).lower()}",
        ]
        # config/demo.yaml's bins are the defaults; a fill sensor on glass (mock pins: no echo, so
        # Home Assistant shows its fill level as unknown) means the set has a fill-level entity.
        angles = {"cardboard": -75, "paper": -45, "plastic": -15, "metal": 15, "glass": 45, "trash": 75}
        overrides += [f"sorter.bins.{name}.angle_deg={angle}" for name, angle in angles.items()]
        overrides += [
            "sorter.bins.glass.fill_sensor.trigger_pin=23",
            "sorter.bins.glass.fill_sensor.echo_pin=24",
            "sorter.bins.glass.fill_sensor.empty_distance_m=1.0",
            "sorter.bins.glass.fill_sensor.full_distance_m=0.2",
        ]
        argv = [str(REPO / ".venv" / "bin" / "recyclex-edge"), "run", "--config", "config/demo.yaml"]
        for override in overrides:
            argv += ["--set", override]
        return Process("the demo bin", argv, self.dir / "bin.log")

    def prepare(self) -> None:
        # Glass first, then other materials: a category is counted for the first time after the
        # announcement and after Home Assistant has seen its counter at 0.
        photos = self.dir / "photos"
        photos.mkdir()
        order = ["glass", "glass", "metal", "paper", "cardboard", "plastic", "trash"]
        for index, label in enumerate(order):
            photo = sorted((PHOTOS / label).glob("*.jpg"))[index]
            (photos / f"{index:02d}-{label}-{photo.name}").symlink_to(photo)
        # `log_type all`: the broker's log shows the QoS of every subscription and publish (checked below).
        (self.dir / "mosquitto.conf").write_text(
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nlog_type all\n"
        )
        self.ha_config.mkdir()
        write_config(self.ha_config, self.ha_port, self.broker_port)
        # An admin user for the check's own API calls (the homeassistant auth provider's storage).
        auth = [self.args.hass, "--script", "auth", "-c", str(self.ha_config), "add", USERNAME, PASSWORD]
        subprocess.run(
            ["nice", "-n", "10", *auth],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start(self, process: Process) -> Process:
        if process not in self.processes:
            self.processes.append(process)
        process.start()
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


async def wait(what: str, condition: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    """Poll an async or plain condition until it is truthy; its value is returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(every_s)


@dataclass
class Entities:
    """Our entities as Home Assistant registered them: unique_id -> entity_id, and the device."""

    device: dict[str, Any]
    by_unique_id: dict[str, str]

    def ids(self, kind: str) -> dict[str, str]:
        """entity_id by category for one kind of unique_id (`count`, `fill`)."""
        marker = f"{DEVICE_ID}_{kind}_"
        return {
            unique_id.removeprefix(marker): entity_id
            for unique_id, entity_id in self.by_unique_id.items()
            if unique_id.startswith(marker)
        }

    def one(self, key: str) -> str:
        return self.by_unique_id[f"{DEVICE_ID}_{key}"]


async def registered(ha: HomeAssistant, unique_ids: set[str]) -> Entities | None:
    devices = await ha.ws("config/device_registry/list")
    device = next((d for d in devices if ["mqtt", DEVICE_ID] in d["identifiers"]), None)
    if device is None:
        return None
    entries = await ha.ws("config/entity_registry/list")
    ours = {e["unique_id"]: e for e in entries if e["platform"] == "mqtt" and e["device_id"] == device["id"]}
    if set(ours) != unique_ids:
        return None
    return Entities(device, {unique_id: e["entity_id"] for unique_id, e in ours.items()})


def is_count(state: str | None) -> bool:
    return state is not None and state.isdigit()


def check_states(entities: Entities, states: dict[str, str], mode_options: list[str]) -> list[str]:
    """What is not sensible about our entities' states while the bin is online."""
    problems = []
    for unique_id, entity_id in entities.by_unique_id.items():
        state = states.get(entity_id)
        if state is None:
            problems.append(f"{entity_id} ({unique_id}) has no state")
        elif state == "unavailable":
            problems.append(f"{entity_id} is unavailable while the bin is online")
    for category, entity_id in entities.ids("count").items():
        if not is_count(states.get(entity_id)):
            problems.append(f"counter {category} ({entity_id}) is {states.get(entity_id)!r}, not a count")
    for category, entity_id in entities.ids("fill").items():
        state = states.get(entity_id, "")
        # Mock pins never echo: no reading, which Home Assistant must show as unknown, never as 0.
        if state != "unknown" and not (_number(state) is not None and 0 <= (_number(state) or 0) <= 100):
            problems.append(f"fill level {category} ({entity_id}) is {state!r}")
    confidence = states.get(entities.one("last_confidence"), "")
    if confidence != "unknown" and not 0 <= (_number(confidence) or -1) <= 100:
        problems.append(f"last confidence is {confidence!r}")
    for key in ("outbox_lost", "review_backlog"):
        if f"{DEVICE_ID}_{key}" in entities.by_unique_id and not is_count(states.get(entities.one(key))):
            problems.append(f"{key} is {states.get(entities.one(key))!r}, not a count")
    if states.get(entities.one("mode")) not in mode_options:
        problems.append(f"mode is {states.get(entities.one('mode'))!r}, not one of {mode_options}")
    if states.get(entities.one("status")) not in ("ok", "degraded", "failing", "starting"):
        problems.append(f"status is {states.get(entities.one('status'))!r}")
    return problems


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


async def scenarios(run: Run, broker: Broker, ha: HomeAssistant) -> None:
    step_s = run.args.step_timeout_s
    bin_process = run.bin_process()

    say("scenario: a fresh bin announces itself")
    run.start(bin_process)
    per_entity = run.args.per_entity
    await wait("the bin's discovery message", lambda: announcements(broker, per_entity), step_s)
    await asyncio.sleep(1)  # per entity: the rest of the messages
    first = components(broker, per_entity)
    unique_ids = set(first)
    state = json.loads((await wait("the bin's state", lambda: broker.on(f"{PREFIX}/state"), step_s))[-1])
    categories = sorted(state["counters"])
    missing = [c for c in categories if f"{DEVICE_ID}_count_{c}" not in unique_ids]
    if missing:
        raise CheckError(f"the discovery message has no counter for {missing}")
    entities: Entities = await wait(
        f"Home Assistant to register the device and its {len(unique_ids)} entities",
        lambda: registered(ha, unique_ids),
        step_s,
        every_s=1,
    )
    say(
        f"Home Assistant registered device {entities.device['name']!r} ({entities.device['manufacturer']} "
        f"{entities.device['model']}, sw {entities.device['sw_version']}) with {len(unique_ids)} entities"
    )
    mode_options = first[f"{DEVICE_ID}_mode"]["options"]
    counters = entities.ids("count")

    async def sensible() -> dict[str, str] | None:
        states = await ha.states()
        return None if check_states(entities, states, mode_options) else states

    try:
        states = await wait("sensible states for every entity", sensible, step_s)
    except CheckError:
        problems = check_states(entities, await ha.states(), mode_options)
        raise CheckError("after the announcement: " + "; ".join(problems)) from None
    zero_at_start = {c for c, entity_id in counters.items() if states[entity_id] == "0"}
    if not zero_at_start:
        raise CheckError("no counter was 0 when the bin announced itself; the check needs one to watch")
    say(f"every entity has a sensible state; counters at 0 so far: {sorted(zero_at_start)}")

    say("scenario: items are sorted, and a category is counted for the first time")

    async def first_count() -> str | None:
        states = await ha.states()
        return next(
            (
                c
                for c in sorted(zero_at_start)
                if is_count(states[counters[c]]) and states[counters[c]] != "0"
            ),
            None,
        )

    category = await wait("a counter that was 0 to count an item", first_count, run.args.items_timeout_s)
    states = await ha.states()
    if states[entities.one("last_class")] in ("none", "unknown"):
        raise CheckError(f"last class is {states[entities.one('last_class')]!r} after items were sorted")
    say(
        f"{category} counted for the first time ({states[counters[category]]}); last class "
        f"{states[entities.one('last_class')]}, confidence {states[entities.one('last_confidence')]} %"
    )
    if (now := await registered(ha, unique_ids)) is None or now.by_unique_id != entities.by_unique_id:
        raise CheckError("the set of entities changed after a first item of a new category")

    say("scenario: commands from Home Assistant (the mode select, the reset-counters button)")
    mode_entity = entities.one("mode")
    await ha.service("select", "select_option", {"entity_id": mode_entity, "option": "maintenance"})
    await wait(
        "the bin to report mode maintenance to Home Assistant",
        lambda: _state_is(ha, mode_entity, "maintenance"),
        step_s,
    )
    # In maintenance the bin ignores deposits, so the counters stay at 0 once reset.
    await ha.service("button", "press", {"entity_id": entities.one("button_reset-counters")})

    async def all_zero() -> bool:
        states = await ha.states()
        return all(states[entity_id] == "0" for entity_id in counters.values())

    await wait("every counter to be 0 in Home Assistant after reset-counters", all_zero, step_s)
    results = [json.loads(p) for p in broker.on(f"{PREFIX}/cmd/reset-counters/result")]
    if not results or results[-1].get("ok") is not True:
        raise CheckError(f"reset-counters from Home Assistant's button did not succeed: {results}")
    say("mode maintenance and reset-counters from Home Assistant: every counter is 0, none missing")
    await ha.service("select", "select_option", {"entity_id": mode_entity, "option": "sort"})
    await wait("mode sort again", lambda: _state_is(ha, mode_entity, "sort"), step_s)

    say("scenario: Home Assistant's birth message (homeassistant/status online)")
    announced = announcements(broker, per_entity)
    broker.publish(f"{DISCOVERY_PREFIX}/status", "online")
    await wait("the bin to announce itself again", lambda: announcements(broker, per_entity) > announced, 30)
    await asyncio.sleep(1)
    if set(again := components(broker, per_entity)) != unique_ids:
        raise CheckError(f"the re-announcement changed the set: {sorted(set(again) ^ unique_ids)}")
    await asyncio.sleep(3)  # time for Home Assistant to process it (and log whatever it thinks of it)
    if (now := await registered(ha, unique_ids)) is None or now.by_unique_id != entities.by_unique_id:
        raise CheckError("the set of entities changed after the re-announcement")

    say("scenario: the bin goes offline (clean stop) and comes back")
    bin_process.stop()

    async def all_unavailable() -> bool:
        states = await ha.states()
        return all(states.get(entity_id) == "unavailable" for entity_id in entities.by_unique_id.values())

    await wait("every entity to be unavailable after the bin stopped", all_unavailable, step_s)
    run.start(bin_process)

    async def back() -> bool:
        return not check_states(entities, await ha.states(), mode_options)

    try:
        await wait("every entity to be available and sensible again", back, step_s)
    except CheckError:
        problems = check_states(entities, await ha.states(), mode_options)
        raise CheckError("after the restart: " + "; ".join(problems)) from None
    if (now := await registered(ha, unique_ids)) is None or now.by_unique_id != entities.by_unique_id:
        raise CheckError("the set of entities changed after the bin's restart")
    say("offline: every entity unavailable; online again: every entity sensible, the same set")

    say("canaries: two broken messages the log scan must catch (else it could not catch ours)")
    # Per-entity messages: every Home Assistant release reads them.
    canaries: dict[str, dict[str, Any]] = {
        # QoS 7 is invalid (an unknown option would not do: Home Assistant drops those silently).
        f"{DISCOVERY_PREFIX}/sensor/{CANARY}/invalid/config": {"unique_id": f"{CANARY}_invalid", "qos": 7},
        # A template that reads a key the state lacks.
        f"{DISCOVERY_PREFIX}/sensor/{CANARY}/template/config": {
            "unique_id": f"{CANARY}_template",
            "name": "ha-check canary",
            "state_class": "measurement",
            "value_template": f"{{{{ value_json.{CANARY}_missing }}}}",
        },
    }
    for topic, config in canaries.items():
        broker.publish(topic, json.dumps({**config, "state_topic": f"ha-check/{CANARY}/state"}), retain=True)
    await asyncio.sleep(3)
    broker.publish(f"ha-check/{CANARY}/state", json.dumps({"present": 1}))
    await asyncio.sleep(3)  # time for Home Assistant to log what it thinks of the last messages
    for topic in canaries:
        broker.publish(topic, "", retain=True)


CANARY = "ha_check_canary"
PER_ENTITY_TOPIC = re.compile(
    rf"^{DISCOVERY_PREFIX}/(?P<platform>[a-z_]+)/{DEVICE_ID}/(?P<key>[^/]+)/config$"
)


def components(broker: Broker, per_entity: bool) -> dict[str, dict[str, Any]]:
    """The bin's entities as announced last: {unique_id: config with its platform as `p`}."""
    if not per_entity:
        device = [p for p in broker.on(f"{DISCOVERY_PREFIX}/device/{DEVICE_ID}/config") if p]
        return dict(json.loads(device[-1])["cmps"]) if device else {}
    latest = {topic: payload for topic, payload, _ in list(broker.messages) if PER_ENTITY_TOPIC.match(topic)}
    found = {}
    for topic, payload in latest.items():
        if payload and (match := PER_ENTITY_TOPIC.match(topic)):
            config = json.loads(payload)
            found[config["unique_id"]] = {**config, "p": match["platform"]}
    return found


def announcements(broker: Broker, per_entity: bool) -> int:
    """How often the bin announced itself: its device message, or (per entity) the mode select's."""
    if per_entity:
        return len([p for p in broker.on(f"{DISCOVERY_PREFIX}/select/{DEVICE_ID}/mode/config") if p])
    return len([p for p in broker.on(f"{DISCOVERY_PREFIX}/device/{DEVICE_ID}/config") if p])


BROKER_SUBSCRIBE = re.compile(r"^\d+: (?P<client>\S+) (?P<qos>\d) (?P<topic>\S+)$")
BROKER_PUBLISH = re.compile(
    r"^\d+: Received PUBLISH from (?P<client>\S+) "
    r"\(d\d, q(?P<qos>\d), r(?P<retain>\d), m\d+, '(?P<topic>[^']*)'"
)


def check_broker_log(log: Path) -> list[str]:
    """Home Assistant's subscriptions to the bin's topics and its commands, as the broker saw them:
    QoS 1 (the `qos` inside every component), commands never retained."""
    problems = []
    subscriptions = []
    commands = []
    for line in log.read_text(errors="replace").splitlines():
        if (match := BROKER_SUBSCRIBE.match(line)) and match["client"] not in OUR_CLIENTS:
            if match["topic"] in (f"{PREFIX}/state", f"{PREFIX}/availability"):
                subscriptions.append((match["topic"], match["qos"]))
        elif (
            (match := BROKER_PUBLISH.match(line))
            and match["client"] not in OUR_CLIENTS
            and match["topic"].startswith(f"{PREFIX}/cmd/")
        ):
            commands.append((match["topic"], match["qos"], match["retain"]))
    if {topic for topic, _ in subscriptions} != {f"{PREFIX}/state", f"{PREFIX}/availability"}:
        problems.append(f"Home Assistant's subscriptions to the state and availability: {subscriptions}")
    problems += [
        f"Home Assistant subscribed to {topic} at QoS {qos}" for topic, qos in subscriptions if qos != "1"
    ]
    if not commands:
        problems.append("the broker saw no command from Home Assistant")
    problems += [
        f"Home Assistant sent {topic} at QoS {qos}, retain {retain}"
        for topic, qos, retain in commands
        if qos != "1" or retain != "0"
    ]
    return problems


async def _state_is(ha: HomeAssistant, entity_id: str, value: str) -> bool:
    return (await ha.states()).get(entity_id) == value


async def check(run: Run) -> None:
    run.prepare()
    run.start(
        Process(
            "mosquitto",
            [run.args.mosquitto, "-c", str(run.dir / "mosquitto.conf")],
            run.dir / "mosquitto.log",
        )
    )
    broker = await wait("the broker", lambda: _try_broker(run.broker_port), 15)
    hass = Process(
        "Home Assistant",
        [run.args.hass, "-c", str(run.ha_config), "--skip-pip", "--log-no-color"],
        run.dir / "hass.out",
    )
    run.start(hass)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            ha = HomeAssistant(run.ha_port, session)
            started = time.monotonic()
            await wait("Home Assistant's HTTP API", ha.up, run.args.start_timeout_s, every_s=1)
            await ha.log_in()
            # Home Assistant's birth message: its MQTT integration is connected and subscribed.
            await wait(
                "Home Assistant to connect to the broker",
                lambda: b"online" in broker.on(f"{DISCOVERY_PREFIX}/status"),
                run.args.start_timeout_s,
            )
            say(f"Home Assistant is up and connected to the broker ({time.monotonic() - started:.0f} s)")
            try:
                await scenarios(run, broker, ha)
            finally:
                await ha.close()
    finally:
        broker.close()
        run.stop_all()


def _try_broker(port: int) -> Broker | None:
    try:
        return Broker(port)
    except OSError:
        return None


def report_log(run: Run, *, scenarios_done: bool) -> bool:
    log = run.ha_config / "home-assistant.log"
    if not log.is_file():
        say(f"error: Home Assistant wrote no log at {log}")
        return False
    scan = scan_log(log)
    for record, reason in scan.tolerated:
        say(f"tolerated {record.level} [{record.logger}] {record.text.splitlines()[0]} -- {reason}")
    for record in scan.failing:
        say(f"Home Assistant logged {record.level} [{record.logger}] {record.text}")
    if scan.failing:
        say(f"{len(scan.failing)} warning(s) or error(s) in Home Assistant's log ({log})")
    caught = True
    if scenarios_done:
        for marker, kind in ((f"{CANARY}_invalid", "invalid discovery"), (f"{CANARY}_missing", "template")):
            found = [r for r in scan.canaries if marker in r.text]
            if found:
                first = found[0]
                say(f"canary caught ({kind}): {first.level} [{first.logger}] {first.text.splitlines()[0]}")
            else:
                say(f"FAILED: the log scan did not catch the {kind} canary, so it could miss ours too")
                caught = False
    return caught and not scan.failing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hass", help="the hass executable of Home Assistant's venv")
    parser.add_argument("--run-dir", type=Path, help="a folder for this run (emptied first)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder when the check passes")
    parser.add_argument(
        "--per-entity",
        action="store_true",
        help="one discovery message per entity (mqtt.discovery.per_entity), for releases before 2024.11",
    )
    parser.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="the whole run, at most")
    parser.add_argument("--start-timeout-s", type=float, default=120.0, help="Home Assistant's start-up")
    parser.add_argument("--step-timeout-s", type=float, default=45.0, help="each scenario's waits")
    parser.add_argument("--items-timeout-s", type=float, default=90.0, help="the first items to be sorted")
    parser.add_argument(
        "--print-integrations", action="store_true", help="print the integrations loaded, for the installer"
    )
    args = parser.parse_args()
    if args.print_integrations:
        print(" ".join((*INTEGRATIONS, *PLATFORMS)))
        return 0
    if not args.hass or not args.run_dir:
        parser.error("--hass and --run-dir are needed")
    if not PHOTOS.is_dir():
        say(f"error: {PHOTOS} does not exist; the demo bin replays its photos")
        return 2

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)

    shutil.rmtree(args.run_dir, ignore_errors=True)
    args.run_dir.mkdir(parents=True)
    run = Run(args, args.run_dir)
    started = time.monotonic()
    passed = False
    try:
        asyncio.run(asyncio.wait_for(check(run), args.timeout_s))
        passed = True
    except CheckError as failure:
        say(f"FAILED: {failure}")
    except TimeoutError:
        say(f"FAILED: the check did not finish within --timeout-s {args.timeout_s:.0f}")
    finally:
        run.stop_all()
    clean_log = report_log(run, scenarios_done=passed)
    if passed:
        for problem in check_broker_log(run.dir / "mosquitto.log"):
            say(f"FAILED: {problem}")
            passed = False
    passed = passed and clean_log
    elapsed_s = time.monotonic() - started
    if passed and not args.keep:
        shutil.rmtree(run.dir, ignore_errors=True)
        say(f"passed in {elapsed_s:.0f} s")
    else:
        outcome = "passed" if passed else "FAILED"
        say(f"{outcome} in {elapsed_s:.0f} s; the logs and Home Assistant's config are in {run.dir}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
