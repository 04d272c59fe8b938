"""What the daemon uses: the active classifier from the registry, model operations, shadow runs and the
watch that rolls a bad model back.

The daemon holds the registry's writer lock for its whole life (the CLI is then refused and pointed
here), so every change to the bin's models goes through one `ModelRegistry`, one operation at a time.

An operation loads the new model and lets the daemon check it (labels) *before* anything is written or
switched: a model that does not load is refused and the running one stays. Then the pointer is
switched on disk, then the pipeline and the API switch, then the watch starts.

The watch (model.watch) runs for `period_s` after an activation and rolls back to the predecessor when
the new model
- fails to load (at activation, or when the daemon starts),
- fails `max_errors` classifications,
- stalls the pipeline (no progress for as long as the systemd watchdog tolerates),
- ends the daemon without a clean stop `max_crashes` times (a crash loop: the watch is kept on disk), or
- says `uncertain` far more often than its predecessor did on this bin: after `min_items` items, its
  uncertain rate is above both `uncertain_ratio` x and `uncertain_margin` + the predecessor's rate (the
  predecessor's rate measured on this bin, or 1 - its card's coverage when it judged too few items).

Shadow: an installed candidate classifies every item beside the active model and never moves a flap;
events carry `shadow` and the registry counts agreement. With model.promote.mode `auto` the candidate
is promoted once it has judged `min_items` items, agreed with the active model's decision on at least
`min_agreement` of them, and its uncertain rate is at most `max_uncertain_increase` above the active
model's on the same items.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from recyclex_edge.classifier import Classifier
from recyclex_edge.config import Config
from recyclex_edge.errors import ModelError, RecycleXError, RegistryError
from recyclex_edge.health import HealthRegistry, Status
from recyclex_edge.registry.audit import AuditLog
from recyclex_edge.registry.download import check_request, check_sha256, download
from recyclex_edge.registry.package import read_package
from recyclex_edge.registry.store import FACTORY, ModelEntry, ModelStore, replace_durably
from recyclex_edge.registry.tally import UNCERTAIN, Counts, ShadowTally, Watch, iso_time

log = logging.getLogger("recyclex_edge.registry")

COMPONENT = "models"
DAEMON = "daemon"
_DEFAULT_UNCERTAIN_RATE = 0.1


def open_classifier(store: ModelStore, entry: ModelEntry, *, num_threads: int, pool_size: int) -> Classifier:
    """A classifier for `entry`; a sealed model is decrypted into memory only, never to a file."""
    if not entry.sealed:
        return Classifier(entry.model_path, num_threads=num_threads, pool_size=pool_size)
    return Classifier(
        entry.model_path,
        num_threads=num_threads,
        pool_size=pool_size,
        model_content=store.model_bytes(entry),
        card=entry.card,
    )


@dataclass(frozen=True)
class Switch:
    """How the daemon takes a model: `check` raises RecycleXError if it cannot use it (say, other labels);
    `use` switches the pipeline and the API; `use_shadow` sets or clears the shadow candidate."""

    check: Callable[[Classifier], None]
    use: Callable[[Classifier], None]
    use_shadow: Callable[[Classifier | None], None]


@dataclass
class _Rollback:
    at: str
    from_version: str
    to_version: str
    reason: str


@dataclass
class _Status:
    last_rollback: _Rollback | None = None
    counts: dict[str, Counts] = field(default_factory=dict)


class ModelRegistry:
    """The daemon's door to the registry.

    >>> registry = ModelRegistry(config, os.environ, health)
    >>> classifier = registry.start()          # the active model (rolled back if it does not load)
    >>> registry.attach(Switch(check, use, use_shadow), loop, pipeline_errors, pipeline_stalled)
    >>> registry.install(package_bytes, who="token:ops", source="upload", shadow=False)
    """

    def __init__(
        self,
        config: Config,
        environ: Mapping[str, str],
        health: HealthRegistry,
        *,
        holder: str = "the recyclex-edge daemon",
    ) -> None:
        self.config = config
        self.model_config = config.model
        self.health = health
        self.store = ModelStore.for_config(config, environ)
        self.audit = AuditLog(self.store.root / "audit.log")
        self._holder = holder
        self._trusted = config.model.public_keys()
        self._operation = threading.Lock()  # one model operation at a time
        self._transfer = threading.Lock()  # one package received or downloaded at a time (memory)
        self._counts_lock = threading.Lock()
        self._switch: Switch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipeline_errors: Callable[[], int] = lambda: 0
        self._pipeline_stalled: Callable[[], bool] = lambda: False
        self._status = _Status()
        self._watch: Watch | None = None
        self._shadow: ShadowTally | None = None
        self._active_version = FACTORY
        self.writable = False
        self.problem: str | None = None

    # -- start and stop -------------------------------------------------------------------------------

    def _acquire(self) -> None:
        try:
            self.store.acquire(self._holder)
        except (RegistryError, OSError) as error:
            problem = f"model registry read-only: {error}"
            if problem != self.problem:
                log.error("%s", problem)
            self.problem = problem
            return
        self.writable, self.problem = True, None

    def start(self) -> Classifier | None:
        """Take the writer lock and load the active model, rolling back while it fails to load."""
        self._acquire()
        self._status.counts = self._load_counts()
        self._watch = self._load_watch()
        if self._watch is not None and self.writable:
            self._watch.crashes += self._watch.running
            self._watch.running = True
            self._save_watch()
        while True:
            try:
                entry = self.store.active()
                classifier = self._open(entry)
            except (ModelError, RegistryError) as error:
                if not self.writable or self.store.state().active == FACTORY:
                    self.health.report("classifier", Status.FAILING, str(error))
                    self._report()
                    return None
                if not self._roll_back_automatically(f"it failed to load at start: {error}"):
                    self.health.report("classifier", Status.FAILING, str(error))
                    return None
                continue
            self._active_version = entry.version
            break
        if self._watch is not None and self._watch.crashes >= self.model_config.watch.max_crashes:
            reason = f"the daemon ended without a clean stop {self._watch.crashes} times while watching it"
            if self._roll_back_automatically(reason):
                return self._start_after_rollback()
        self._report()
        return classifier

    def _start_after_rollback(self) -> Classifier | None:
        try:
            entry = self.store.active()
            self._active_version = entry.version
            classifier = self._open(entry)
        except (ModelError, RegistryError) as error:
            self.health.report("classifier", Status.FAILING, str(error))
            classifier = None
        self._report()
        return classifier

    def attach(
        self,
        switch: Switch,
        loop: asyncio.AbstractEventLoop,
        *,
        pipeline_errors: Callable[[], int],
        pipeline_stalled: Callable[[], bool],
    ) -> None:
        """Called once the daemon's stages exist: from now on operations switch them."""
        self._switch, self._loop = switch, loop
        self._pipeline_errors, self._pipeline_stalled = pipeline_errors, pipeline_stalled
        if self._watch is not None:
            self._watch.errors_at_start = pipeline_errors()
        candidate = self.store.state().candidate
        if candidate is not None:
            try:
                self._start_shadow(candidate)
            except RecycleXError as error:
                log.error("shadow candidate %s cannot run: %s", candidate, error)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.running = False
            self._save_watch()
        self._save_status()
        self.store.release()
        self.writable = False

    # -- reading --------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """GET /api/models and the page: every version, the watch, the shadow run, the last rollback."""
        entries = [entry.as_dict() for entry in self.store.entries()]
        with self._counts_lock:
            watch = self._watch_summary()
            shadow = self._shadow.summary() if self._shadow is not None else None
        rollback = self._status.last_rollback
        return {
            "models": entries,
            "active": self.store.state().active,
            "writable": self.writable,
            "problem": self.problem,
            "watch": watch,
            "shadow": shadow,
            "last_rollback": asdict(rollback) if rollback is not None else None,
            "promote": self.model_config.promote.mode,
            "audit": self.audit.recent(50),
        }

    def state(self) -> dict[str, Any]:
        """The small part MQTT's retained state carries."""
        rollback = self._status.last_rollback
        state = self.store.state()
        with self._counts_lock:
            shadow = self._shadow.summary() if self._shadow is not None else None
        return {
            "active": state.active,
            "candidate": state.candidate,
            "watching": self._watch is not None,
            "shadow": shadow,
            "last_rollback": asdict(rollback) if rollback is not None else None,
        }

    def _watch_summary(self) -> dict[str, Any] | None:
        watch = self._watch
        return watch.summary(self.model_config.watch.period_s) if watch is not None else None

    # -- operations (blocking; each raises RecycleXError with the reason, after auditing it) -----------

    def install(self, data: bytes, *, who: str, source: str, shadow: bool) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            package = read_package(
                data, self._trusted, allow_unsigned=self.model_config.allow_unsigned, source=source
            )
            # The files first (without activating), then the same path as `activate`.
            entry, fresh = self.store.install(package, by=who, source=source, activate=False)
            verb = "installed" if fresh else "already installed"
            if shadow:
                self._start_shadow(entry.version, persist=True)
                return {
                    "version": entry.version,
                    "detail": f"{verb} {package.describe()} as shadow candidate",
                }
            self._activate_locked(entry.version)
            return {"version": entry.version, "detail": f"{verb} and activated {package.describe()}"}

        return self._operation_run(who, "install", source, run)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """No model operation runs meanwhile (for reload-model, which re-reads the active model)."""
        if not self._operation.acquire(timeout=60):
            raise RegistryError("another model operation is still running; try again when it has finished")
        try:
            yield
        finally:
            self._operation.release()

    @contextlib.contextmanager
    def transfer(self) -> Iterator[None]:
        """Held while a package is received or downloaded and installed: one in memory at a time."""
        if not self._transfer.acquire(blocking=False):
            raise RegistryError("another model package is being received or installed; retry when it is done")
        try:
            yield
        finally:
            self._transfer.release()

    def install_from_url(self, url: str, sha256: str, *, who: str, shadow: bool) -> dict[str, Any]:
        """Download (on the daemon's event loop, with the size limit, timeout and TLS verification), then
        install. `sha256` is the package file's."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.transfer())
                data = self._download(url, sha256)
            except RecycleXError as error:
                self.audit.append(who, "install", url, ok=False, detail=str(error))
                raise
            return self.install(data, who=who, source=url, shadow=shadow)  # audits itself

    def activate(self, version: str, *, who: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            previous = self.store.state().active
            self._activate_locked(version)
            return {"version": version, "detail": f"version {version} is active (was {previous})"}

        return self._operation_run(who, "activate", version, run)

    def rollback(self, *, who: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            previous, now = self._rollback_locked(who, "requested", audit=False)
            return {"version": now, "detail": f"rolled back from {previous} to {now}"}

        return self._operation_run(who, "rollback", None, run)

    def remove(self, version: str, *, who: str) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            if self.store.state().candidate == version:
                self._stop_shadow()
            self.store.remove(version)
            return {"version": version, "detail": f"version {version} removed"}

        return self._operation_run(who, "remove", version, run)

    def _operation_run(
        self, who: str, action: str, target: str | None, run: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        if not self.writable:
            error = RegistryError(self.problem or "the model registry is not open")
            self.audit.append(who, action, target, ok=False, detail=str(error))
            raise error
        if not self._operation.acquire(timeout=60):
            raise RegistryError("another model operation is still running; try again when it has finished")
        try:
            result = run()
        except (RecycleXError, OSError) as error:
            detail = str(error) if isinstance(error, RecycleXError) else f"{error.strerror}: {error.filename}"
            self.audit.append(who, action, target, ok=False, detail=detail)
            log.warning("model %s %s by %s refused: %s", action, target or "", who, detail)
            if isinstance(error, RegistryError):
                raise
            raise RegistryError(detail) from None
        finally:
            self._operation.release()
        self.audit.append(who, action, target, ok=True, detail=result["detail"])
        log.info("model %s by %s: %s", action, who, result["detail"])
        self._report()
        return result

    def _open(self, entry: ModelEntry) -> Classifier:
        return open_classifier(
            self.store,
            entry,
            num_threads=self.model_config.num_threads,
            pool_size=self.model_config.pool_size,
        )

    def _load_checked(self, version: str) -> Classifier:
        entry = self.store.entry(version)
        try:
            classifier = self._open(entry)
        except ModelError as error:
            raise RegistryError(f"version {version} does not load, so nothing was changed: {error}") from None
        if self._switch is not None:
            self._switch.check(classifier)
        return classifier

    def _activate_locked(self, version: str) -> None:
        state = self.store.state()
        if state.active == version:
            return
        classifier = self._load_checked(version)
        predecessor = state.active
        if state.candidate == version:
            self._stop_shadow()
        self.store.activate(version)
        self._use(version, classifier)
        self._begin_watch(version, predecessor)

    def _roll_back_automatically(self, reason: str) -> bool:
        """False (reported, watch ended) when there is nothing to go back to."""
        try:
            self._rollback_locked(DAEMON, reason)
        except RecycleXError as error:
            self._end_watch()
            self.problem = f"wanted to roll back ({reason}) but cannot: {error}"
            log.error("%s", self.problem)
            self.audit.append(DAEMON, "rollback", self.store.state().active, ok=False, detail=self.problem)
            self._report()
            return False
        return True

    def _rollback_locked(self, who: str, reason: str, *, audit: bool = True) -> tuple[str, str]:
        """Back to the predecessor, loaded and checked first (once the stages are attached). Asked for by
        someone, a predecessor that does not load is refused; done automatically, it is stepped over."""
        previous = self.store.state().active
        classifier: Classifier | None = None
        while self._switch is not None:
            target = self.store.rollback_target()
            try:
                classifier = self._load_checked(target)
                break
            except RecycleXError as error:
                if who != DAEMON:
                    raise
                log.error("rollback target %s cannot be used (%s); going further back", target, error)
                self.store.rollback()
        _, now = self.store.rollback()
        self._end_watch()
        self._status.last_rollback = _Rollback(iso_time(time.time()), previous, now, reason)
        if who == DAEMON:
            log.error("model %s rolled back to %s: %s", previous, now, reason)
        if audit:
            self.audit.append(who, "rollback", previous, ok=True, detail=f"to {now}: {reason}")
        if classifier is not None:
            self._use(now, classifier)
        self._save_status()
        self._report()
        return previous, now

    def _use(self, version: str, classifier: Classifier) -> None:
        self._active_version = version
        if self._switch is not None:
            self._switch.use(classifier)
        card = classifier.card
        self.health.report(
            "classifier",
            Status.OK,
            f"{card.name} {card.version} (registry version {version}) on {classifier.backend}",
        )

    # -- shadow ---------------------------------------------------------------------------------------

    def _start_shadow(self, version: str, *, persist: bool = False) -> None:
        if version == self.store.state().active:
            raise RegistryError(f"version {version} is the active model; a shadow must be another one")
        classifier = self._load_checked(version)
        if persist:
            self.store.set_candidate(version)
        with self._counts_lock:
            self._shadow = ShadowTally(version)
        if self._switch is not None:
            self._switch.use_shadow(classifier)

    def _stop_shadow(self) -> None:
        with self._counts_lock:
            self._shadow = None
        if self._switch is not None:
            self._switch.use_shadow(None)
        if self.store.state().candidate is not None:
            self.store.set_candidate(None)

    # -- the watch ------------------------------------------------------------------------------------

    def _baseline(self, version: str) -> float:
        with self._counts_lock:
            counts = self._status.counts.get(version)
        if counts is not None and counts.items >= self.model_config.watch.min_items:
            return counts.uncertain / counts.items
        try:
            coverage = self.store.entry(version).card.decision.coverage
        except RegistryError:
            coverage = None
        return 1.0 - coverage if coverage is not None else _DEFAULT_UNCERTAIN_RATE

    def _begin_watch(self, version: str, predecessor: str) -> None:
        if self.model_config.watch.period_s <= 0:
            self._end_watch()
            return
        baseline = self._baseline(predecessor)
        with self._counts_lock:
            self._watch = Watch(
                version,
                self.store.entry(version).card.version,
                predecessor,
                time.time(),
                baseline,
                errors_at_start=self._pipeline_errors(),
            )
        self._save_watch()

    def _end_watch(self) -> None:
        with self._counts_lock:
            self._watch = None
        (self.store.root / "watch.json").unlink(missing_ok=True)

    def _save_watch(self) -> None:
        watch = self._watch
        if watch is not None and self.writable:
            replace_durably(self.store.root / "watch.json", json.dumps(asdict(watch)).encode())

    def _load_watch(self) -> Watch | None:
        try:
            watch = Watch(**json.loads((self.store.root / "watch.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
        if watch.version != self.store.state().active:
            return None
        if time.time() - watch.started_at > self.model_config.watch.period_s:
            return None
        return watch

    def observe(self, event: Mapping[str, Any]) -> None:
        """An event sink: counts each model's uncertain rate and the shadow's agreement. Never blocks."""
        with self._counts_lock:
            counts = self._status.counts.setdefault(self._active_version, Counts())
            counts.items += 1
            counts.uncertain += event.get("decision") == UNCERTAIN
            if self._watch is not None:
                self._watch.record(event)
            if self._shadow is not None:
                self._shadow.record(event)

    def observe_label(self, event_id: str, label: str) -> bool:
        """A person's label for a recent item (the site-learning Review page is meant to call this): when
        the shadow judged that item, both models' accuracy on labelled items counts it. False otherwise
        (no shadow, an item from before it, one labelled already, or one too old)."""
        with self._counts_lock:
            return self._shadow is not None and self._shadow.label(event_id, label)

    def tick(self) -> None:
        """Called every second or so off the event loop: the watch's verdict and auto promotion; and,
        while someone else (a CLI command) held the registry at start, another try to take it."""
        if not self.writable:
            self._acquire()
            if self.writable:
                log.info("model registry taken over; model operations are possible")
                self._follow_store()
                self._report()
        if not self.writable or self._switch is None:
            return
        verdict = self._watch_verdict()
        if verdict is not None:
            with self._operation:
                if self._watch is not None:
                    self._roll_back_automatically(verdict)
            return
        if self._promotion_due():
            shadow = self._shadow
            assert shadow is not None
            detail = json.dumps(shadow.summary())
            try:
                self.activate(shadow.version, who=DAEMON)
                log.info("shadow candidate %s promoted automatically: %s", shadow.version, detail)
            except RecycleXError as error:
                log.error("automatic promotion of %s failed: %s", shadow.version, error)
                self._stop_shadow()

    def _follow_store(self) -> None:
        """Use the store's active version if someone changed it while we could not write."""
        version = self.store.state().active
        if version == self._active_version or self._switch is None:
            return
        try:
            self._use(version, self._load_checked(version))
        except RecycleXError as error:
            log.error("version %s, made active meanwhile, cannot be used: %s", version, error)

    def _watch_verdict(self) -> str | None:
        settings = self.model_config.watch
        with self._counts_lock:
            watch = self._watch
            if watch is None:
                return None
            if time.time() - watch.started_at <= settings.period_s:
                errors = self._pipeline_errors() - watch.errors_at_start
                return watch.verdict(settings, errors, self._pipeline_stalled())
            self._watch = None
        log.info("model %s passed its %.0f s watch", watch.version, settings.period_s)
        (self.store.root / "watch.json").unlink(missing_ok=True)
        self._report()
        return None

    def _promotion_due(self) -> bool:
        with self._counts_lock:
            return self._shadow is not None and self._shadow.promotion_due(self.model_config.promote)

    # -- download -------------------------------------------------------------------------------------

    def _download(self, url: str, sha256: str) -> bytes:
        check_request(url, sha256)
        if self._loop is None:
            raise RegistryError("the daemon is not ready to download yet; try again in a moment")
        future = asyncio.run_coroutine_threadsafe(
            download(url, self.model_config.max_package_bytes, self.model_config.download_timeout_s),
            self._loop,
        )
        try:
            # download() keeps its own time; this only guards against a loop that stopped under it.
            data = future.result(timeout=self.model_config.download_timeout_s + 10)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RegistryError(f"downloading {url} did not finish; the daemon may be stopping") from None
        check_sha256(data, sha256)
        return data

    # -- reporting ------------------------------------------------------------------------------------

    def _report(self) -> None:
        state = self.store.state()
        rollback = self._status.last_rollback
        parts = [f"active {state.active}"]
        if state.candidate:
            parts.append(f"shadow {state.candidate}")
        if self._watch is not None:
            parts.append(
                f"watching until {iso_time(self._watch.started_at + self.model_config.watch.period_s)}"
            )
        if rollback is not None:
            parts.append(
                f"rolled back automatically from {rollback.from_version} to {rollback.to_version} at "
                f"{rollback.at}: {rollback.reason}"
                if rollback.reason != "requested"
                else f"rolled back from {rollback.from_version} at {rollback.at}"
            )
        if self.problem:
            parts.append(self.problem)
        automatic = rollback is not None and rollback.reason != "requested"
        status = Status.DEGRADED if automatic or self.problem else Status.OK
        self.health.report(COMPONENT, status, "; ".join(parts))

    def _load_counts(self) -> dict[str, Counts]:
        try:
            document = json.loads((self.store.root / "counts.json").read_text(encoding="utf-8"))
            return {str(version): Counts(**counts) for version, counts in document.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}

    def _save_status(self) -> None:
        if not self.writable:
            return
        with self._counts_lock:
            document = {version: asdict(counts) for version, counts in self._status.counts.items()}
        try:
            replace_durably(self.store.root / "counts.json", json.dumps(document).encode())
        except OSError as error:
            log.warning("cannot save the models' uncertain counts: %s", error.strerror)
