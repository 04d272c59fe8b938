"""The versions kept on the bin, under `<state_dir>/models`, and which one is active.

    models/
      state.json              {"active", "candidate", "history"}: replaced atomically (write, fsync, rename)
      versions/<version>/     model.tflite (or model.tflite.sealed), model.json (card), meta.json
      staging/                half-written installs; emptied by the next writer
      audit.log               see audit.py
      lock                    held (flock) by the one writer: the daemon, or one CLI command

Every change is made by writing new files, fsyncing them and renaming: a version directory appears
whole or not at all, and `state.json` names only versions already in place. So a power cut or kill -9 at
any point leaves either the previous state (the previous model active) or the new one, never a mix.

The factory model (`model.path`, else the one shipped in the package) is version `factory`: always
listed, never removed, the last resort of a rollback.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recyclex_edge.config import Config
from recyclex_edge.errors import ModelError, RegistryError
from recyclex_edge.model_card import SHIPPED_MODEL, ModelCard, card_path_for, load_card
from recyclex_edge.registry.package import ModelPackage
from recyclex_edge.registry.sealing import Sealer

FACTORY = "factory"
MODEL_FILE = "model.tflite"
SEALED_FILE = "model.tflite.sealed"
CARD_FILE = "model.json"
META_FILE = "meta.json"
STATE_FILE = "state.json"
HISTORY_KEPT = 20
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")

# Named points of an install, reported to `on_step` (tests kill a real process at each of them).
Step = Callable[[str], None]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_synced(path: Path, data: bytes, on_step: Step | None = None, step: str = "") -> None:
    with path.open("wb") as handle:
        half = len(data) // 2
        handle.write(data[:half])
        if on_step is not None and step:
            handle.flush()
            on_step(step)
        handle.write(data[half:])
        handle.flush()
        os.fsync(handle.fileno())


def replace_durably(path: Path, data: bytes, on_step: Step | None = None, step: str = "") -> None:
    """Replace `path` with `data` atomically: a reader (or a reboot) sees the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _write_synced(temporary, data)
        if on_step is not None and step:
            on_step(step)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class ModelEntry:
    """One version on the bin, as `model list` shows it."""

    version: str
    card: ModelCard
    folder: Path | None  # None for the factory model
    model_path: Path  # the .tflite (sealed: the encrypted file)
    sealed: bool
    meta: dict[str, Any]
    active: bool = False
    candidate: bool = False

    @property
    def factory(self) -> bool:
        return self.version == FACTORY

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.card.name,
            "model_version": self.card.version,
            "sha256": self.card.sha256,
            "factory": self.factory,
            "active": self.active,
            "candidate": self.candidate,
            "encrypted": self.sealed,
            "installed_at": self.meta.get("installed_at"),
            "installed_by": self.meta.get("installed_by"),
            "source": self.meta.get("source"),
            "signer": self.meta.get("signer"),
        }


@dataclass
class RegistryState:
    active: str = FACTORY
    candidate: str | None = None
    history: list[str] = field(default_factory=list)  # earlier active versions, most recent last

    def as_json(self) -> bytes:
        document = {"active": self.active, "candidate": self.candidate, "history": self.history}
        return (json.dumps(document, indent=2) + "\n").encode()


class WriterLock:
    """The registry's one-writer rule: an exclusive flock on `models/lock` naming its holder."""

    def __init__(self, path: Path, holder: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            who = self._handle.read().strip() or "another process"
            self._handle.close()
            raise RegistryError(
                f"the model registry in {path.parent} is in use by {who}. While the daemon runs, change "
                "models through it: POST /api/models (or .../activate, /rollback) on its HTTP API, or the "
                "MQTT commands install-model, activate-model, rollback-model"
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"{holder} (pid {os.getpid()})\n")
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


class ModelStore:
    """Reads the registry; with `writer()` held, changes it. Blocking file I/O: call it off the event loop.

    >>> store = ModelStore(state_dir / "models", factory_model=None, keep=3)
    >>> with store.writer("cli"):
    ...     store.install(package, by="cli", source="model-2.0.rxm", activate=True)
    """

    def __init__(
        self,
        root: Path,
        *,
        factory_model: Path | None,
        keep: int,
        sealer: Sealer | None = None,
        on_step: Step | None = None,
    ) -> None:
        self.root = root
        self.versions_dir = root / "versions"
        self.staging_dir = root / "staging"
        self.factory_model = factory_model if factory_model is not None else SHIPPED_MODEL
        self.keep = keep
        self.sealer = sealer
        self._on_step = on_step
        self._lock: WriterLock | None = None
        self._factory_card: tuple[tuple[int, ...], ModelCard] | None = None  # (file stamps, card)

    @classmethod
    def for_config(
        cls, config: Config, environ: Mapping[str, str], *, on_step: Step | None = None
    ) -> ModelStore:
        """The bin's registry: `<storage.state_dir>/models`, sealed when a key credential is configured."""
        credential = config.model.encryption_key_credential
        return cls(
            Path(config.storage.state_dir) / "models",
            factory_model=config.model.path,
            keep=config.model.keep,
            sealer=Sealer.from_credential(credential, environ) if credential else None,
            on_step=on_step,
        )

    # -- reading --------------------------------------------------------------------------------------

    def state(self) -> RegistryState:
        path = self.root / STATE_FILE
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return RegistryState()
        except (OSError, ValueError) as error:
            raise RegistryError(
                f"{path} cannot be read ({error}); restore it or remove it to use the factory model"
            ) from None
        return RegistryState(
            active=str(document.get("active") or FACTORY),
            candidate=document.get("candidate"),
            history=[str(v) for v in document.get("history", [])],
        )

    def versions(self) -> list[str]:
        """Installed versions, oldest install first."""
        if not self.versions_dir.is_dir():
            return []
        entries = []
        for folder in self.versions_dir.iterdir():
            if folder.is_dir() and _VERSION.match(folder.name):
                meta = self._meta(folder)
                entries.append((str(meta.get("installed_at", "")), folder.name))
        return [name for _, name in sorted(entries)]

    def _meta(self, folder: Path) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return meta

    def entry(self, version: str, state: RegistryState | None = None) -> ModelEntry:
        state = state if state is not None else self.state()
        flags = {"active": state.active == version, "candidate": state.candidate == version}
        if version == FACTORY:
            card = self._factory()
            meta = {"source": str(self.factory_model), "installed_by": "package"}
            return ModelEntry(FACTORY, card, None, self.factory_model, False, meta, **flags)
        folder = self.versions_dir / version
        if not _VERSION.match(version) or not folder.is_dir():
            known = ", ".join([FACTORY, *self.versions()])
            raise RegistryError(f"no model version {version!r} on this bin; installed: {known}")
        try:
            card = ModelCard.model_validate_json((folder / CARD_FILE).read_bytes())
        except (OSError, ValueError) as error:
            raise RegistryError(f"version {version}: its card cannot be read: {error}") from None
        sealed = (folder / SEALED_FILE).is_file()
        model_path = folder / (SEALED_FILE if sealed else MODEL_FILE)
        return ModelEntry(version, card, folder, model_path, sealed, self._meta(folder), **flags)

    def _factory(self) -> ModelCard:
        """The factory model's card, checked against the model (sha256) again only when a file changed."""
        try:
            model, card_file = self.factory_model.stat(), card_path_for(self.factory_model).stat()
            stamp: tuple[int, ...] | None = (
                model.st_mtime_ns,
                model.st_size,
                card_file.st_mtime_ns,
                card_file.st_size,
            )
        except OSError:
            stamp = None  # load_card says what is missing
        if stamp is not None and self._factory_card is not None and self._factory_card[0] == stamp:
            return self._factory_card[1]
        try:
            card = load_card(self.factory_model)
        except ModelError as error:
            raise RegistryError(f"the factory model cannot be used: {error}") from None
        if stamp is not None:
            self._factory_card = (stamp, card)
        return card

    def entries(self) -> list[ModelEntry]:
        """Every version, the factory model first, then installs oldest first."""
        state = self.state()
        return [self.entry(version, state) for version in [FACTORY, *self.versions()]]

    def active(self) -> ModelEntry:
        return self.entry(self.state().active)

    def model_bytes(self, entry: ModelEntry) -> bytes:
        """The .tflite bytes of `entry`, decrypted in memory when it is sealed."""
        data = entry.model_path.read_bytes()
        if not entry.sealed:
            return data
        if self.sealer is None:
            raise RegistryError(
                f"version {entry.version} is encrypted but no key is configured "
                "(model.encryption_key_credential)"
            )
        return self.sealer.open(data, associated=entry.card.sha256.encode())

    def problems(self) -> list[str]:
        """What is inconsistent in the store (empty when all is well): for tests and `model list`."""
        found = []
        state = self.state()
        installed = set(self.versions())
        for role, version in (("active", state.active), ("candidate", state.candidate)):
            if version is not None and version != FACTORY and version not in installed:
                found.append(f"{role} version {version} is not installed")
        for version in installed:
            folder = self.versions_dir / version
            has_model = (folder / MODEL_FILE).is_file() or (folder / SEALED_FILE).is_file()
            if not (has_model and (folder / CARD_FILE).is_file() and (folder / META_FILE).is_file()):
                found.append(f"version {version} is incomplete")
        return found

    # -- writing (only while holding the writer lock) --------------------------------------------------

    @contextlib.contextmanager
    def writer(self, holder: str) -> Iterator[ModelStore]:
        self.acquire(holder)
        try:
            yield self
        finally:
            self.release()

    def acquire(self, holder: str) -> None:
        """Become the registry's only writer (RegistryError if someone else is); clears crashed installs."""
        self._lock = WriterLock(self.root / "lock", holder)
        if self.staging_dir.exists():
            shutil.rmtree(self.staging_dir, ignore_errors=True)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _require_writer(self) -> None:
        if self._lock is None:
            raise RuntimeError("the registry is changed only while holding its writer lock")

    def _step(self, name: str) -> None:
        if self._on_step is not None:
            self._on_step(name)

    def _save_state(self, state: RegistryState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        replace_durably(self.root / STATE_FILE, state.as_json(), self._on_step, "state-staged")
        self._step("state-replaced")

    def install(
        self, package: ModelPackage, *, by: str, source: str, activate: bool, shadow: bool = False
    ) -> tuple[ModelEntry, bool]:
        """Put `package` in place (and make it active, or the shadow candidate). (entry, newly installed)."""
        self._require_writer()
        version = package.card.version
        if not _VERSION.match(version) or version == FACTORY:
            raise RegistryError(
                f"model version {version!r} cannot be installed: a version is 1-64 letters, digits, "
                f"'.', '_', '+' or '-' and not {FACTORY!r}"
            )
        folder = self.versions_dir / version
        fresh = not folder.exists()
        if not fresh:
            existing = self.entry(version)
            if (
                existing.card.sha256 != package.sha256
                or (folder / CARD_FILE).read_bytes() != package.card_bytes
            ):
                raise RegistryError(
                    f"version {version} is already installed with different contents (model sha256 "
                    f"{existing.card.sha256[:12]}, the package's {package.sha256[:12]}, or another card); "
                    "a changed model or card needs a new version in its card"
                )
        else:
            self._place(package, folder, by=by, source=source)
        state = self.state()
        if activate and not shadow:
            self._make_active(state, version)
        elif shadow:
            state.candidate = version
        self._save_state(state)
        self._prune()
        return self.entry(version), fresh

    def _place(self, package: ModelPackage, folder: Path, *, by: str, source: str) -> None:
        staging = self.staging_dir / uuid.uuid4().hex
        staging.mkdir(parents=True)
        model = package.model_bytes
        name = MODEL_FILE
        if self.sealer is not None:
            model, name = self.sealer.seal(model, associated=package.sha256.encode()), SEALED_FILE
        _write_synced(staging / name, model, self._on_step, "writing-model")
        _write_synced(staging / CARD_FILE, package.card_bytes)
        meta = {
            "installed_at": _now(),
            "installed_by": by,
            "source": source,
            "signer": str(package.signer) if package.signer is not None else None,
        }
        _write_synced(staging / META_FILE, (json.dumps(meta, indent=2) + "\n").encode())
        _fsync_dir(staging)
        self._step("staged")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging.rename(folder)
        _fsync_dir(self.versions_dir)
        self._step("version-placed")

    def _make_active(self, state: RegistryState, version: str) -> None:
        if state.active != version:
            state.history = [*state.history, state.active][-HISTORY_KEPT:]
            state.active = version
        if state.candidate == version:
            state.candidate = None

    def activate(self, version: str) -> tuple[str, str]:
        """Make `version` active (a shadow candidate is promoted this way). (previous, new)."""
        self._require_writer()
        self.entry(version)  # exists
        state = self.state()
        previous = state.active
        self._make_active(state, version)
        self._save_state(state)
        return previous, version

    def _rollback_history(self, state: RegistryState) -> list[str]:
        installed = {FACTORY, *self.versions()}
        history = [version for version in state.history if version in installed and version != state.active]
        if not history:
            raise RegistryError(f"there is no earlier model to roll back to; {state.active} stays active")
        return history

    def rollback_target(self) -> str:
        """The version `rollback()` would make active (RegistryError if there is none)."""
        return self._rollback_history(self.state())[-1]

    def rollback(self) -> tuple[str, str]:
        """Back to the version active before this one. (rolled back from, now active)."""
        self._require_writer()
        state = self.state()
        history = self._rollback_history(state)
        previous, state.active = state.active, history[-1]
        state.history = history[:-1]
        self._save_state(state)
        return previous, state.active

    def set_candidate(self, version: str | None) -> None:
        self._require_writer()
        if version is not None:
            self.entry(version)
        state = self.state()
        state.candidate = version
        self._save_state(state)

    def remove(self, version: str) -> None:
        self._require_writer()
        if version == FACTORY:
            raise RegistryError("the factory model is part of the software and cannot be removed")
        entry = self.entry(version)
        if entry.active:
            raise RegistryError(f"version {version} is active; activate or roll back to another one first")
        state = self.state()
        if state.candidate == version:
            state.candidate = None
        state.history = [v for v in state.history if v != version]
        self._save_state(state)
        self._discard(version)

    def _discard(self, version: str) -> None:
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        doomed = self.staging_dir / f"removed-{version}-{uuid.uuid4().hex[:8]}"
        (self.versions_dir / version).rename(doomed)
        _fsync_dir(self.versions_dir)
        shutil.rmtree(doomed, ignore_errors=True)

    def _prune(self) -> None:
        """Keep `keep` installed versions: never the active one, the candidate or the rollback target."""
        state = self.state()
        protected = {state.active, state.candidate, *state.history[-1:]}
        installed = self.versions()
        surplus = len(installed) - self.keep
        for version in installed:
            if surplus <= 0:
                break
            if version in protected:
                continue
            state.history = [v for v in state.history if v != version]
            self._save_state(state)
            self._discard(version)
            surplus -= 1
