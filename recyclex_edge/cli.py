"""`recyclex-edge`: run the daemon, check a config, classify photos, manage a bin's models and labels."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from recyclex_edge import __version__
from recyclex_edge.errors import ConfigError, ImageDecodeError, ModelError, RecycleXError, RegistryError
from recyclex_edge.registry.commandline import add_model_parser, run_model_command

if TYPE_CHECKING:
    from recyclex_edge.classifier import Classifier
    from recyclex_edge.decision import ConfidencePolicy
    from recyclex_edge.fieldlearning import FieldLearning

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_BAD_MODEL = 3

log = logging.getLogger("recyclex_edge.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recyclex-edge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_config_args(sub: argparse.ArgumentParser, *, required: bool) -> None:
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one config key, e.g. --set http.port=18080 (repeatable)",
        )
        if required:
            sub.add_argument("config", type=Path, metavar="FILE", help="the YAML config file")
        else:
            sub.add_argument("--config", type=Path, default=None, metavar="FILE", help="the YAML config file")

    run = commands.add_parser("run", help="run the bin daemon")
    add_config_args(run, required=False)

    check = commands.add_parser("check-config", help="validate a config file without starting anything")
    add_config_args(check, required=True)

    add_model_parser(commands, add_config_args)

    classify = commands.add_parser("classify", help="classify image files or folders (recursive)")
    classify.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    classify.add_argument("--json", action="store_true", help="one JSON object per image per line")
    classify.add_argument("--model", type=Path, default=None, help="a .tflite model with its card beside it")
    add_config_args(classify, required=False)  # --config: the bin's active model and decision settings
    classify.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")

    labels = commands.add_parser("labels", help="a bin's labelled items: import, export, stats")
    actions = labels.add_subparsers(dest="action", required=True, metavar="ACTION")
    imports = actions.add_parser(
        "import", help="label photos DIR/<label>/<image> on the bin and refit its site adaptation"
    )
    imports.add_argument("--config", type=Path, required=True, metavar="FILE", help="the bin's config file")
    imports.add_argument("folder", type=Path, metavar="DIR")
    exports = actions.add_parser("export", help="write OUT/<label>/<id>.jpg and OUT/manifest.jsonl")
    exports.add_argument("--config", type=Path, required=True, metavar="FILE", help="the bin's config file")
    exports.add_argument("out", type=Path, metavar="OUT")
    stats = actions.add_parser("stats", help="counts per label, review backlog, the adaptation (JSON)")
    stats.add_argument("--config", type=Path, required=True, metavar="FILE", help="the bin's config file")
    for action in (imports, exports, stats):
        action.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key"
        )
    return parser


def _print_config_problems(error: ConfigError) -> None:
    print(f"config is invalid ({len(error.problems)} problem(s)):", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def _check_config(args: argparse.Namespace) -> int:
    from recyclex_edge.config import load_config

    try:
        load_config(args.config, args.overrides)
    except ConfigError as error:
        _print_config_problems(error)
        return EXIT_BAD_CONFIG
    print(f"{args.config}: valid")
    return EXIT_OK


def _image_paths(paths: Sequence[Path]) -> Iterator[Path]:
    """Named files as given (so a wrong one is reported); folders searched for images, sorted."""
    for path in paths:
        if path.is_dir():
            yield from sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            yield path


def _classify(args: argparse.Namespace) -> int:
    from recyclex_edge.classifier import Classifier
    from recyclex_edge.decision import ConfidencePolicy
    from recyclex_edge.imaging import decode_image

    # With --config (and no --model): exactly as that bin would, its active model, its site adaptation
    # and its thresholds.
    site: FieldLearning | None = None
    classifier: Classifier | None = None
    policy: ConfidencePolicy | None = None
    if args.config is not None and args.model is None:
        opened = _open_site(args.config, args.overrides, args.threads)
        if isinstance(opened, int):
            return opened
        site = opened
    else:
        try:
            classifier = Classifier(args.model, num_threads=args.threads)
        except ModelError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BAD_MODEL
        policy = ConfidencePolicy.from_card(classifier)
    status = EXIT_OK
    for path in _image_paths(args.paths):
        try:
            frame = decode_image(path.read_bytes())
        except (OSError, ImageDecodeError) as error:
            message = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            status = EXIT_SOME_FAILED
            if args.json:
                print(json.dumps({"path": str(path), "error": message}), flush=True)
            else:
                print(f"{path}: error: {message}", file=sys.stderr)
            continue
        started = time.perf_counter()
        if site is not None:
            judged, decision = site.judge_classification([frame])
            label, confidence = judged.verdict.label, judged.verdict.confidence
            probabilities = judged.verdict.probabilities
            model = {**site.model_identity(), "adaptation": judged.adaptation_id}
        else:
            assert classifier is not None and policy is not None
            result = classifier.classify(frame)
            label, confidence, probabilities = result.label, result.confidence, result.probabilities
            decision = policy.decide(label, confidence)
            model = {"name": result.model_name, "version": result.model_version}
        # Without --config, the model's own time as before; with it, everything the bin does per item.
        inference_ms = result.inference_ms if site is None else (time.perf_counter() - started) * 1000.0
        if args.json:
            line = {
                "path": str(path),
                "class": label,
                "confidence": round(confidence, 6),
                "probabilities": {name: round(p, 6) for name, p in probabilities.items()},
                "inference_ms": round(inference_ms, 3),
                "decision": decision,
                "model": model,
            }
            print(json.dumps(line), flush=True)
        else:
            print(f"{path}: {label} {confidence:.3f} -> {decision} ({inference_ms:.1f} ms)")
    return status


def _open_site(config_path: Path, overrides: list[str], threads: int | None = None) -> FieldLearning | int:
    """The bin's active model (from its registry) with its field learning, as its daemon opens them; or
    an exit status."""
    from recyclex_edge.config import load_config
    from recyclex_edge.fieldlearning import FieldLearning
    from recyclex_edge.registry.service import open_classifier
    from recyclex_edge.registry.store import ModelStore

    try:
        config = load_config(config_path, overrides)
        store = ModelStore.for_config(config, os.environ)
        classifier = open_classifier(
            store, store.active(), num_threads=threads or config.model.num_threads, pool_size=1
        )
        site = FieldLearning(config.capture, config.decision, config.storage.state_dir)
        site.use_classifier(classifier)
    except ConfigError as error:
        _print_config_problems(error)
        return EXIT_BAD_CONFIG
    except (ModelError, RegistryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_MODEL
    return site


def _labels(args: argparse.Namespace) -> int:
    opened = _open_site(args.config, args.overrides)
    if isinstance(opened, int):
        return opened
    site = opened
    try:
        if args.action == "import":
            return _labels_import(site, args.folder)
        if args.action == "export":
            return _labels_export(site, args.out)
        print(json.dumps(site.summary(), indent=2))
        return EXIT_OK
    except RecycleXError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_SOME_FAILED
    finally:
        site.close()


def _labels_import(site: FieldLearning, folder: Path) -> int:
    if not folder.is_dir():
        print(f"error: {folder} is not a folder; expected DIR/<label>/<image>", file=sys.stderr)
        return EXIT_BAD_CONFIG
    sub_folders = sorted(p for p in folder.iterdir() if p.is_dir())
    unknown = [p.name for p in sub_folders if p.name not in site.label_names]
    if unknown or not sub_folders:
        print(
            f"error: {', '.join(unknown) or 'no label folders'} in {folder}: folders must be named after "
            f"labels; known labels: {', '.join(site.label_names)}",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    status, imported = EXIT_OK, 0
    for sub in sub_folders:
        for path in _image_paths([sub]):
            try:
                site.import_photo(path, sub.name, by="import")
            except (ImageDecodeError, OSError) as error:
                print(f"{path}: skipped: {error}", file=sys.stderr)
                status = EXIT_SOME_FAILED
                continue
            imported += 1
    result = site.refit()
    print(f"imported {imported} photo(s); site adaptation: {site.summary()['adaptation_detail']}")
    log.debug("refit: %s", result.reason)
    return status


def _labels_export(site: FieldLearning, out: Path) -> int:
    store = site.store
    if store is None:
        raise RecycleXError("the capture store is not available (capture.enabled, storage.state_dir)")
    items = site.labelled_items()
    out.mkdir(parents=True, exist_ok=True)
    exported = []
    with (out / "manifest.jsonl").open("a", encoding="utf-8") as manifest:
        for item in items:
            jpeg = store.image(item.event_id)
            if jpeg is None:
                continue
            target = out / item.label / f"{item.event_id}.jpg"
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(jpeg)
            event = store.event(item.event_id) or {}
            line = {
                "id": item.event_id,
                "file": str(target.relative_to(out)),
                "label": item.label,
                "predicted": item.predicted,
                "probabilities": event.get("probabilities"),
                "model_version": item.model_version,
                "labelled_by": item.labelled_by,
                "labelled_at": item.labelled_at,
                "event": event,
            }
            manifest.write(json.dumps(line) + "\n")
            exported.append(item.event_id)
    store.mark_exported(exported)
    print(f"exported {len(exported)} labelled item(s) to {out}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from recyclex_edge.config import load_config
    from recyclex_edge.daemon import run_daemon
    from recyclex_edge.logs import configure_logging

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        _print_config_problems(error)
        return EXIT_BAD_CONFIG
    configure_logging(config.logging)
    return run_daemon(config)


def _model(args: argparse.Namespace) -> int:
    return run_model_command(args, _print_config_problems)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "check-config": _check_config,
        "classify": _classify,
        "run": _run,
        "model": _model,
        "labels": _labels,
    }
    return handlers[args.command](args)
