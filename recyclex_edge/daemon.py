"""The Daemon: wires the stages together and owns the lifecycle (start, ready, watchdog, stop).

    camera -> deposit detector -> SortingPipeline (classifier, decision, sorter) -> event sinks
                                                                 sinks: MQTT outbox, WebSocket hub, API

Stages never reach into each other; they meet here. A stage that cannot start (a model that fails to
load, GPIO that cannot be opened, no camera) is reported in the health registry and the daemon keeps
serving `/health`, so a technician sees what is wrong instead of a unit in a restart loop. Stop runs in
reverse order of start: no new items, the sort in flight aborted with the flaps home, events flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import statistics
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
from aiohttp import web

from recyclex_edge import __version__
from recyclex_edge.api import EVENTS, build_app
from recyclex_edge.api.guard import ConnectionGuard, GuardedSite, ensure_file_limit, handler_options
from recyclex_edge.api.keys import INFERENCE, METRICS
from recyclex_edge.api.models import add_model_routes
from recyclex_edge.api.page import add_technician_page, camera_jpeg
from recyclex_edge.api.review import add_review_api
from recyclex_edge.bin_metrics import BinMetrics
from recyclex_edge.camera import Camera, build_camera
from recyclex_edge.classifier import Classifier
from recyclex_edge.config import Config
from recyclex_edge.decision import UNCERTAIN, ConfidencePolicy
from recyclex_edge.detector import DepositDetector, build_detector
from recyclex_edge.errors import RecycleXError
from recyclex_edge.fieldlearning import FieldLearning
from recyclex_edge.gpio import GpioError, make_pin_factory
from recyclex_edge.health import HealthRegistry, Status
from recyclex_edge.history import History
from recyclex_edge.housekeeping import check_disk, check_temperature
from recyclex_edge.logs import flush_suppressed
from recyclex_edge.mqtt import CommandHandler
from recyclex_edge.notify import Liveness, Notifier, watchdog_interval_s
from recyclex_edge.outbox import Outbox
from recyclex_edge.pipeline import LIVENESS_NAME, EventSink, Mode, SortingPipeline
from recyclex_edge.registry.commands import model_commands
from recyclex_edge.registry.service import ModelRegistry, Switch, open_classifier
from recyclex_edge.sorter import Sorter, SorterError

if TYPE_CHECKING:
    from recyclex_edge.mqtt import MqttBridge

log = logging.getLogger("recyclex_edge.daemon")

CAMERA_LIVENESS = "camera"
# A loop silent for this long is wedged. The pipeline beats at least every 0.5 s outside an item and an
# item takes a few seconds; the camera thread never blocks in a driver call for more than a read slice.
MAX_LOOP_SILENCE_S = 20.0
# READY=1 waits for the first frame, but not forever: a bin without a working camera must still come up
# and serve /health (systemd would otherwise kill it at TimeoutStartSec and restart it, in a loop).
FIRST_FRAME_GRACE_S = 15.0
SNAPSHOTS_KEPT = 20
HOUSEKEEPING_INTERVAL_S = 30.0
MODEL_WATCH_INTERVAL_S = 1.0


def load_classifier(registry: ModelRegistry, health: HealthRegistry) -> Classifier | None:
    """The registry's active classifier, or None (reported as failing) when no model can be used."""
    classifier = registry.start()
    if classifier is None:
        log.error("classifier unavailable: %s", health.snapshot()["classifier"].detail)
        return None
    health.report(
        "classifier",
        Status.OK,
        f"{classifier.card.name} {classifier.card.version} on {classifier.backend}, "
        f"{classifier.pool_size} interpreter(s) x {classifier.num_threads} thread(s)",
    )
    log.info("model %s %s loaded (%s)", classifier.card.name, classifier.card.version, classifier.backend)
    return classifier


class Daemon:
    """One bin: its camera, detector, classifier, sorter, MQTT bridge and API.

    `paced=False` replays photos as fast as they can be read (tests); a real camera ignores it.
    """

    def __init__(
        self, config: Config, *, environ: Mapping[str, str] | None = None, paced: bool = True
    ) -> None:
        self.config = config
        self.paced = paced
        self.health = HealthRegistry()
        self.history = History()
        self.liveness = Liveness(MAX_LOOP_SILENCE_S)
        self.environ = os.environ if environ is None else environ
        self.notifier = Notifier.from_environment(environ)
        self.watchdog_interval_s = watchdog_interval_s(environ)
        self.classifier: Classifier | None = None
        self.registry: ModelRegistry | None = None
        self.site: FieldLearning | None = None
        self.pin_factory: Any = None
        self.sorter: Sorter | None = None
        self.camera: Camera | None = None
        self.detector: DepositDetector | None = None
        self.pipeline: SortingPipeline | None = None
        self.outbox: Outbox | None = None
        self.mqtt: MqttBridge | None = None
        self.app: web.Application | None = None
        self.connection_guard: ConnectionGuard | None = None
        self.metrics: BinMetrics | None = None
        self._fps_sample: tuple[float, int] | None = None  # (monotonic s, frames) at the last stats
        self._sinks: list[EventSink] = []
        # reload-model comes from MQTT's thread or the technician page; one at a time.
        self._reload_lock = threading.Lock()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    # -- start ----------------------------------------------------------------------------------------

    def _open_gpio(self) -> Any:
        try:
            return make_pin_factory(self.config.gpio.pin_factory)
        except GpioError as error:
            self.health.report("gpio", Status.FAILING, str(error))
            log.error("%s", error)
            return None

    def _open_sorter(self, pin_factory: Any) -> Sorter | None:
        try:
            return Sorter(
                self.config.sorter,
                state_dir=Path(self.config.storage.state_dir),
                health=self.health,
                pin_factory=pin_factory,
            )
        except SorterError as error:
            log.error("%s", error)  # already reported as failing by the sorter
            return None

    def _open_detector(self, camera: Camera, pin_factory: Any) -> DepositDetector | None:
        try:
            detector = build_detector(self.config.detector, camera, pin_factory)
        except GpioError as error:
            self.health.report("detector", Status.FAILING, str(error))
            log.error("deposit detector unavailable: %s", error)
            return None
        if detector is None:
            self.health.report(
                "detector", Status.DEGRADED, "detector.kind is 'none': deposits are not noticed"
            )
            return None
        detector.start()
        self.health.report("detector", Status.OK, f"{self.config.detector.kind} detector watching")
        return detector

    def _start_mqtt(self) -> None:
        config = self.config
        if not config.mqtt.enabled:
            for component in ("mqtt", "outbox"):
                self.health.report(
                    component,
                    Status.DISABLED,
                    "mqtt.enabled is false: this bin publishes no events, state or stats",
                    critical=False,
                )
            return
        from recyclex_edge.mqtt import MqttBridge  # paho-mqtt only for a bin that publishes

        self.outbox = Outbox(
            Path(config.storage.state_dir) / "outbox.sqlite3",
            max_rows=config.storage.outbox.max_rows,
            max_bytes=config.storage.outbox.max_bytes,
            health=self.health,
        )
        self.mqtt = MqttBridge(
            config.mqtt,
            config.device.id,
            self.outbox,
            self.health,
            commands=self._commands(),
            state_provider=self.state,
            stats_provider=self.stats,
            device_name=config.device.name,
        )
        self.mqtt.start()

    def _start_pipeline(self, sinks: list[EventSink]) -> None:
        if self.classifier is None or self.detector is None or self.camera is None:
            return
        decision = self.config.decision
        policy = ConfidencePolicy.for_model(self.classifier, decision)
        if self.sorter is not None and (unrouted := self.sorter.unrouted(self.classifier.labels)):
            log.warning(
                "no bin for %s in sorter.bins: those items go to the residual bin", ", ".join(unrouted)
            )
        self.pipeline = SortingPipeline(
            self.camera,
            self.detector,
            self.classifier,
            policy,
            self.sorter,
            decision,
            device_id=self.config.device.id,
            sinks=sinks,
            liveness=self.liveness,
            history=self.history,
            site=self.site,
        )
        self.pipeline.start()

    def _report_fill_sensors(self) -> None:
        """Fill levels are a component of their own, so a bin without sensors says so ('disabled')."""
        measured = [name for name, bin_config in self.config.sorter.bins.items() if bin_config.fill_sensor]
        if not measured:
            self.health.report(
                "fill_levels",
                Status.DISABLED,
                "no bin in sorter.bins has a fill_sensor: fill levels are not measured",
                critical=False,
            )
        elif self.sorter is None:
            self.health.report(
                "fill_levels", Status.FAILING, "the sorter is not running (see sorter)", critical=False
            )
        else:
            self.health.report(
                "fill_levels", Status.OK, f"measured for {', '.join(measured)}", critical=False
            )

    # -- what dashboards see (called from MQTT threads: reads only) ------------------------------------

    def categories(self) -> list[str]:
        """Every category the bin counts: the model's labels, the configured bins, `uncertain`, and any
        counted before (another model). Stable from the start, so dashboards have one entity each."""
        names = {*self.config.sorter.bins, UNCERTAIN}
        if self.classifier is not None:
            names.update(self.classifier.labels)
        if self.sorter is not None:
            names.update(self.sorter.counts.categories)
        return sorted(names)

    def state(self) -> dict[str, Any]:
        """Mode, counters (every category, 0 included) and fill levels: the retained MQTT state and the
        technician page."""
        sorter = self.sorter
        counted = sorter.counts.categories if sorter is not None else {}
        return {
            "mode": self.pipeline.mode.value if self.pipeline is not None else "idle",
            "counters": {category: counted.get(category, 0) for category in self.categories()},
            "bins": dict(sorter.counts.bins) if sorter is not None else {},
            "fill_levels": sorter.fill_levels() if sorter is not None else {},
            "models": self.registry.state() if self.registry is not None else None,
            "review": self._review_state(),
        }

    def _review_state(self) -> dict[str, Any] | None:
        """The Review backlog for dashboards: items waiting for a label, labelled, the adaptation."""
        if self.site is None:
            return None
        summary = self.site.summary()
        adaptation = summary["adaptation"]
        return {
            "backlog": summary["backlog"],
            "labelled": summary["labelled"],
            "adaptation": adaptation["id"] if adaptation is not None else None,
            "drift": bool(summary["drift"] and summary["drift"]["drifting"]),
        }

    def _camera_fps(self, frames: int) -> float | None:
        """Frames per second since the previous stats message (None for the first one)."""
        now = time.monotonic()
        previous, self._fps_sample = self._fps_sample, (now, frames)
        if previous is None or now <= previous[0]:
            return None
        return round((frames - previous[1]) / (now - previous[0]), 2)

    def stats(self) -> dict[str, Any]:
        camera = self.camera.stats() if self.camera is not None else None
        recent_ms = self.pipeline.stats.inference_ms if self.pipeline is not None else []
        return {
            "fps": self._camera_fps(camera.frames) if camera is not None else None,
            "frames": camera.frames if camera is not None else 0,
            "camera_reconnects": camera.reconnects if camera is not None else 0,
            "items": self.pipeline.stats.items if self.pipeline is not None else 0,
            "inference_ms": round(statistics.fmean(recent_ms), 3) if recent_ms else None,
        }

    # -- commands (from MQTT; each raises RecycleXError to answer with an error) ------------------------

    def _commands(self) -> dict[str, CommandHandler]:
        commands: dict[str, CommandHandler] = {
            "mode": self._command_mode,
            "test-actuator": self._command_test_actuator,
            "reload-model": self._command_reload_model,
            "reset-counters": self._command_reset_counters,
            "snapshot": self._command_snapshot,
        }
        if self.registry is not None:
            commands.update(model_commands(self.registry))
        if self.site is not None:
            commands.update(self.site.commands())
        return commands

    def _command_mode(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self.pipeline is None:
            raise RecycleXError("the sorting pipeline is not running (see /health); the mode cannot change")
        self.pipeline.set_mode(Mode(arguments["mode"]))
        return {"mode": self.pipeline.mode.value}

    def _command_test_actuator(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self.sorter is None:
            raise RecycleXError("the sorter is not available (see /health)")
        category = str(arguments["category"])
        if category not in self.config.sorter.bins:
            raise RecycleXError(f"no bin {category!r}; expected one of: {', '.join(self.config.sorter.bins)}")
        result = self.sorter.sort(category, count=False)
        return {
            "category": result.category,
            "bin": result.bin,
            "outcome": result.outcome.value,
            "reason": result.reason,
        }

    def _command_reload_model(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Load the model file again (an operator replaced it) and switch the pipeline and the API to it.

        The new model is loaded and checked before anything switches: a bad file leaves the running
        model in place and answers with the reason. If the model failed to load at start-up, a good
        file now starts the sorting pipeline and the predict endpoints without a restart.
        """
        with self._reload_lock:
            if self.app is None or self._stop.is_set():
                raise RecycleXError("the bin is starting or stopping; try again in a moment")
            return self._reload_model(self.app)

    def _reload_model(self, app: web.Application) -> dict[str, Any]:
        registry = self.registry
        assert registry is not None
        running = self.classifier
        with registry.exclusive():
            classifier = open_classifier(
                registry.store,
                registry.store.active(),
                num_threads=self.config.model.num_threads,
                pool_size=self.config.model.pool_size,
            )
            self._check_model(classifier)
            self._use_model(classifier)
        card = classifier.card
        verb = "reloaded" if running is not None else "loaded (it had failed at start-up)"
        detail = f"{card.name} {card.version} {verb} (sha256 {card.sha256[:12]})"
        self.health.report("classifier", Status.OK, detail)
        log.info("model reloaded: %s", detail)
        return {"model": {"name": classifier.card.name, "version": classifier.card.version}}

    # -- models (the registry decides which; these switch the stages to it) ------------------------------

    def _check_model(self, classifier: Classifier) -> None:
        """Raise unless the stages can take `classifier` (same labels; thresholds that name its labels)."""
        running = self.classifier
        if running is not None and classifier.labels != running.labels:
            raise RecycleXError(
                f"the new model's labels {list(classifier.labels)} differ from the running model's "
                f"{list(running.labels)}; sorter.bins and dashboards expect the old ones: "
                "restart the service instead"
            )
        ConfidencePolicy.for_model(classifier, self.config.decision)

    def _use_model(self, classifier: Classifier) -> None:
        policy = ConfidencePolicy.for_model(classifier, self.config.decision)
        self.classifier = classifier
        if self.site is not None:  # before a pipeline that had failed to start is started with it
            self.site.use_classifier(classifier)
        if self.pipeline is not None:
            self.pipeline.use_classifier(classifier, policy)
        else:
            self._start_pipeline(self._sinks)  # a no-op while the camera or detector is missing
        if self.app is not None:
            self.app[INFERENCE].use_classifier(classifier, policy)
        if self.mqtt is not None:
            self.mqtt.state_changed()

    def _use_shadow(self, classifier: Classifier | None) -> None:
        if self.pipeline is not None:
            shadow = (
                None
                if classifier is None
                else (classifier, ConfidencePolicy.for_model(classifier, self.config.decision))
            )
            self.pipeline.use_shadow(shadow)

    def _command_reset_counters(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self.sorter is None:
            raise RecycleXError("the sorter is not available (see /health)")
        self.sorter.counts.reset()
        log.info("counters reset")
        return {"counters": self.state()["counters"]}

    def _command_snapshot(self, arguments: dict[str, Any]) -> dict[str, Any]:
        frame = self.camera.latest() if self.camera is not None else None
        if frame is None:
            raise RecycleXError("no camera frame yet (see the camera component in /health)")
        folder = Path(self.config.storage.state_dir) / "snapshots"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"snapshot-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}.jpg"
        if not cv2.imwrite(str(path), frame.image):
            raise RecycleXError(f"could not write {path} (disk full?)")
        for old in sorted(folder.glob("snapshot-*.jpg"))[:-SNAPSHOTS_KEPT]:
            old.unlink(missing_ok=True)
        height, width = frame.image.shape[:2]
        return {"path": str(path), "width": width, "height": height}

    # -- systemd --------------------------------------------------------------------------------------

    def status_line(self) -> str:
        """A short human summary for systemctl status."""
        overall = self.health.overall()
        problems = [
            f"{name} {component.status.value}"
            for name, component in sorted(self.health.snapshot().items())
            if component.status is not Status.OK
        ]
        items = self.pipeline.stats.items if self.pipeline is not None else 0
        mode = self.pipeline.mode.value if self.pipeline is not None else "idle"
        summary = f"{overall.value}; mode {mode}; {items} item(s) since start"
        return summary + (f"; {', '.join(problems)}" if problems else "")

    async def _announce_ready(self) -> None:
        deadline_s = time.monotonic() + FIRST_FRAME_GRACE_S
        while self.camera is not None and self.camera.latest() is None and time.monotonic() < deadline_s:
            if self.config.camera.source == "none":
                break
            await asyncio.sleep(0.1)
        self.notifier.send(READY=1, STATUS=self.status_line())
        log.info("ready: %s", self.status_line())

    def _camera_alive(self) -> bool:
        return self.camera is not None and self.camera.responsive(MAX_LOOP_SILENCE_S)

    def _housekeeping(self) -> None:
        state_dir = Path(self.config.storage.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        disk_free_bytes = check_disk(state_dir, self.health)
        soc_temperature_c = check_temperature(self.health)
        if self.metrics is not None:
            self.metrics.vitals.disk_free_bytes = disk_free_bytes
            self.metrics.vitals.soc_temperature_c = soc_temperature_c
        if self.site is not None:
            self.site.housekeeping()
        if self.sorter is not None:
            self.sorter.refresh_health()  # a bin filling up while idle must show too

    async def _keep_house(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self._housekeeping)
                flush_suppressed()
            except Exception:
                log.exception("housekeeping failed; trying again in %.0f s", HOUSEKEEPING_INTERVAL_S)
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)

    async def _watch_models(self) -> None:
        """The registry's watch (automatic rollback) and automatic promotion of a shadow candidate."""
        while True:
            await asyncio.sleep(MODEL_WATCH_INTERVAL_S)
            if self.registry is None:
                continue
            try:
                await asyncio.to_thread(self.registry.tick)
            except Exception:
                log.exception("the model watch failed; trying again")

    async def _pet_watchdog(self, interval_s: float) -> None:
        warned = False
        while True:
            if self._camera_alive():
                self.liveness.beat(CAMERA_LIVENESS)
            silent = self.liveness.silent()
            if not silent:
                self.notifier.send(WATCHDOG=1, STATUS=self.status_line())
                warned = False
            elif not warned:
                # systemd restarts us after WatchdogSec of silence: that is the point.
                log.error(
                    "not petting the watchdog: %s made no progress for %.0f s",
                    silent,
                    self.liveness.max_silence_s,
                )
                warned = True
            await asyncio.sleep(interval_s)

    # -- run ------------------------------------------------------------------------------------------

    async def serve(self) -> None:
        config = self.config
        self.registry = ModelRegistry(config, self.environ, self.health)
        self.classifier = load_classifier(self.registry, self.health)
        self.site = FieldLearning(
            config.capture, config.decision, config.storage.state_dir, health=self.health
        )
        if self.classifier is not None:
            self.site.use_classifier(self.classifier)
        self.site.start()
        pin_factory = self._open_gpio()
        self.pin_factory = pin_factory
        self.sorter = self._open_sorter(pin_factory)
        self.camera = build_camera(config.camera, self.health, paced=self.paced)
        self.camera.start()
        self.liveness.register(CAMERA_LIVENESS)
        self.detector = self._open_detector(self.camera, pin_factory)

        self.app = build_app(config, self.classifier, self.health)
        hub = self.app[EVENTS]
        add_technician_page(
            self.app,
            history=self.history,
            commands=self._commands(),
            state=self.state,
            camera_snapshot=camera_jpeg(self.camera),
            detector_state=lambda: self.detector.state.value if self.detector is not None else "off",
            after_command=lambda: self.mqtt.state_changed() if self.mqtt is not None else None,
        )
        add_model_routes(self.app, self.registry)
        add_review_api(self.app, self.site)
        self.app[METRICS].watch_drift(self.site.drift_state)
        self.app[METRICS].watch_adaptation(self.site.adaptation_id)
        self._start_mqtt()
        self.site.on_change = lambda: self.mqtt.state_changed() if self.mqtt is not None else None
        self.site.on_label = self.registry.observe_label  # a shadow run's accuracy on labelled items
        self.metrics = BinMetrics(self.app[METRICS].registry, self.health)
        self.metrics.attach(
            camera=self.camera, detector=self.detector, sorter=self.sorter, outbox=self.outbox, mqtt=self.mqtt
        )
        self._report_fill_sensors()
        # The outbox first: an event counts as produced once it is durable.
        sinks: list[EventSink] = [self.mqtt.submit_event] if self.mqtt is not None else []
        self._sinks = [*sinks, hub.publish, self.registry.observe, self.metrics.observe_event]
        self._start_pipeline(self._sinks)
        self.registry.attach(
            Switch(check=self._check_model, use=self._use_model, use_shadow=self._use_shadow),
            asyncio.get_running_loop(),
            pipeline_errors=lambda: self.pipeline.stats.classify_errors if self.pipeline is not None else 0,
            pipeline_stalled=lambda: LIVENESS_NAME in self.liveness.silent(),
        )

        options = handler_options(config.http)
        runner = web.AppRunner(self.app, handle_signals=False, **options)
        await runner.setup()
        self.connection_guard = ConnectionGuard(config.http.connections)
        ensure_file_limit(config.http.connections)
        watchdog: asyncio.Task[None] | None = None
        housekeeping = asyncio.create_task(self._keep_house())
        model_watch = asyncio.create_task(self._watch_models())
        try:
            site = GuardedSite(runner, config.http.host, config.http.port, self.connection_guard, options)
            await site.start()
            log.info(
                "recyclex-edge %s serving http://%s:%d (device %s)",
                __version__,
                config.http.host,
                config.http.port,
                config.device.id,
            )
            self.started.set()
            await self._announce_ready()
            if self.watchdog_interval_s is not None:
                watchdog = asyncio.create_task(self._pet_watchdog(self.watchdog_interval_s))
            await self._stop.wait()
        finally:
            self.notifier.send(STOPPING=1, STATUS="stopping: flaps home, flushing events")
            log.info("stopping")
            for task in (watchdog, housekeeping, model_watch):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await asyncio.to_thread(self._stop_stages)
            await runner.cleanup()
            log.info("stopped")
            self.stopped.set()

    def _stop_stages(self) -> None:
        """Reverse order of start. Blocking (joins threads, homes the servo): run off the event loop."""
        with self._reload_lock:  # a reload in progress may still be starting the pipeline
            if self.pipeline is not None:
                self.pipeline.stop()
        if self.detector is not None:
            self.detector.close()
        if self.camera is not None:
            self.camera.close()
        if self.sorter is not None:
            self.sorter.close()
        if self.mqtt is not None:
            self.mqtt.stop()
        if self.outbox is not None:
            self.outbox.close()
        if self.registry is not None:
            self.registry.close()
        if self.site is not None:
            self.site.close()


def run_daemon(config: Config) -> int:
    """Run until SIGTERM or SIGINT; returns the process exit status."""

    async def main() -> int:
        daemon = Daemon(config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, daemon.request_stop)
        try:
            await daemon.serve()
        except OSError as error:
            log.error("cannot serve on %s:%d: %s", config.http.host, config.http.port, error.strerror)
            return 1
        except RecycleXError as error:
            log.error("cannot start: %s", error)
            return 2
        return 0

    return asyncio.run(main())
