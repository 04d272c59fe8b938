"""`recyclex-edge model ...`: keys, packages and the bin's model versions from the shell.

Refusals (an unsigned, untrusted, truncated or tampered package; an unknown version; the registry in
use by the running daemon) print one clear line to stderr and exit 2, and change nothing.

While the daemon runs it holds the registry's writer lock: `install`, `activate`, `rollback` and
`remove` are then refused with a pointer to the HTTP API and the MQTT commands, so there is never a
second writer. `list` and `verify` only read and always work.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from recyclex_edge.errors import ConfigError, ModelError, RegistryError
from recyclex_edge.registry.keys import PublicKey, generate_keypair, load_signing_key
from recyclex_edge.registry.package import SUFFIX, pack, read_package
from recyclex_edge.registry.store import ModelStore

EXIT_OK = 0
EXIT_REFUSED = 2

AddConfigArgs = Callable[..., None]


def add_model_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], add_config_args: AddConfigArgs
) -> None:
    model = commands.add_parser("model", help="model packages and the bin's model versions")
    actions = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    keygen = actions.add_parser(
        "keygen", help="make a signing key pair: DIR/NAME.key (0600) and DIR/NAME.pub"
    )
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR")
    keygen.add_argument("--name", default="recyclex-models", help="the key's name (default recyclex-models)")

    packer = actions.add_parser("pack", help="package a .tflite and its card (the .json beside it), signed")
    packer.add_argument("model", type=Path, metavar="MODEL.tflite")
    packer.add_argument("--out", type=Path, required=True, metavar="PKG", help=f"the package file ({SUFFIX})")
    signing = packer.add_mutually_exclusive_group(required=True)
    signing.add_argument("--key", type=Path, metavar="KEY", help="the .key file from 'model keygen'")
    signing.add_argument("--unsigned", action="store_true", help="no signature (labs: model.allow_unsigned)")

    verify = actions.add_parser("verify", help="check a package against the config's trusted keys")
    verify.add_argument("package", type=Path, metavar="PKG")
    add_config_args(verify, required=False)

    listing = actions.add_parser("list", help="every model version on the bin, the factory model included")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    add_config_args(listing, required=False)

    install = actions.add_parser("install", help="verify and install a package, and activate it")
    install.add_argument("package", type=Path, metavar="PKG")
    install.add_argument("--shadow", action="store_true", help="install as the shadow candidate instead")
    add_config_args(install, required=False)

    activate = actions.add_parser("activate", help="make an installed version active")
    activate.add_argument("version", metavar="VERSION")
    add_config_args(activate, required=False)

    rollback = actions.add_parser("rollback", help="go back to the version active before this one")
    add_config_args(rollback, required=False)

    remove = actions.add_parser("remove", help="delete an installed version that is not active")
    remove.add_argument("version", metavar="VERSION")
    add_config_args(remove, required=False)


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def run_model_command(args: argparse.Namespace, print_config_problems: Callable[[ConfigError], None]) -> int:
    try:
        if args.model_command == "keygen":
            key_path, pub_path = generate_keypair(args.out, args.name)
            print(f"wrote {key_path} (keep it secret) and {pub_path} (add its line to model.trusted_keys)")
            return EXIT_OK
        if args.model_command == "pack":
            return _pack(args)
        return _with_config(args)
    except ConfigError as error:
        print_config_problems(error)
        return EXIT_REFUSED
    except RegistryError as error:
        print(f"refused: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        hint = (
            "; run it as the service's user (sudo -u recyclex recyclex-edge model ...)"
            if isinstance(error, PermissionError)
            else ""
        )
        print(f"refused: cannot use{where}: {error.strerror}{hint}", file=sys.stderr)
        return EXIT_REFUSED


def _pack(args: argparse.Namespace) -> int:
    key = None if args.unsigned else load_signing_key(args.key)
    data = pack(args.model, key)
    temporary = args.out.with_name(args.out.name + ".partial")
    temporary.write_bytes(data)
    temporary.replace(args.out)
    print(f"wrote {args.out} ({len(data)} bytes, {'unsigned' if key is None else f'signed by {key.public}'})")
    return EXIT_OK


def _read(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise RegistryError(f"{path} is {size} bytes, over model.max_package_bytes ({max_bytes})")
        return path.read_bytes()
    except OSError as error:
        raise RegistryError(f"cannot read {path}: {error.strerror}") from None


def _with_config(args: argparse.Namespace) -> int:
    from recyclex_edge.config import load_config
    from recyclex_edge.registry.audit import AuditLog

    config = load_config(args.config, args.overrides)
    store = ModelStore.for_config(config, os.environ)
    action = args.model_command
    if action == "list":
        entries = store.entries()
        if args.json:
            print(json.dumps([entry.as_dict() for entry in entries], indent=2))
        else:
            for entry in entries:
                flags = " ".join(
                    f for f, on in (("ACTIVE", entry.active), ("candidate", entry.candidate)) if on
                )
                print(
                    f"{entry.version:<16} {entry.card.name} {entry.card.version}  "
                    f"{entry.meta.get('installed_at') or '-'}  by {entry.meta.get('installed_by') or '-'}  "
                    f"from {entry.meta.get('source') or '-'}  {flags}".rstrip()
                )
        for problem in store.problems():
            print(f"warning: {problem}", file=sys.stderr)
        return EXIT_OK
    trusted = config.model.public_keys()
    if action == "verify":
        package = read_package(
            _read(args.package, config.model.max_package_bytes),
            trusted,
            allow_unsigned=config.model.allow_unsigned,
            source=str(args.package),
        )
        print(f"{args.package}: valid: {package.describe()}")
        return EXIT_OK

    audit = AuditLog(store.root / "audit.log")
    who = _who()
    target = str(args.package) if action == "install" else getattr(args, "version", None)
    try:
        with store.writer(who):
            message = _change(
                store, args, config.model.max_package_bytes, trusted, config.model.allow_unsigned, who
            )
    except RegistryError as error:
        if "in use by" not in str(error):
            audit.append(who, action, target, ok=False, detail=str(error))
        raise
    audit.append(who, action, target, ok=True, detail=message)
    print(message)
    return EXIT_OK


def _check_loads(store: ModelStore, version: str) -> None:
    """The runtime loads the version (as the daemon checks before it switches)."""
    from recyclex_edge.registry.service import open_classifier

    try:
        open_classifier(store, store.entry(version), num_threads=1, pool_size=1)
    except ModelError as error:
        raise RegistryError(f"version {version} does not load, so nothing was changed: {error}") from None


def _change(
    store: ModelStore,
    args: argparse.Namespace,
    max_bytes: int,
    trusted: list[PublicKey],
    allow_unsigned: bool,
    who: str,
) -> str:
    action = args.model_command
    if action == "install":
        package = read_package(
            _read(args.package, max_bytes), trusted, allow_unsigned=allow_unsigned, source=str(args.package)
        )
        entry, fresh = store.install(
            package, by=who, source=str(args.package.resolve()), activate=False, shadow=args.shadow
        )
        verb = "installed" if fresh else "already installed:"
        if args.shadow:
            return f"{verb} {package.describe()} as version {entry.version}, now the shadow candidate"
        _check_loads(store, entry.version)
        store.activate(entry.version)
        return f"{verb} {package.describe()} as version {entry.version}, now active"
    if action == "activate":
        _check_loads(store, args.version)
        previous, now = store.activate(args.version)
        return f"version {now} is active (was {previous})"
    if action == "rollback":
        _check_loads(store, store.rollback_target())
        previous, now = store.rollback()
        return f"rolled back from {previous} to {now}"
    store.remove(args.version)
    return f"version {args.version} removed"
