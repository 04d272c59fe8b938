"""`recyclex-edge`: run the daemon, check a config, classify photos from the shell."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from recyclex_edge import __version__
from recyclex_edge.errors import ConfigError, ImageDecodeError, ModelError, RegistryError
from recyclex_edge.registry.commandline import add_model_parser, run_model_command

if TYPE_CHECKING:
    from recyclex_edge.classifier import Classifier
    from recyclex_edge.decision import ConfidencePolicy

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

    try:
        if args.config is not None and args.model is None:
            classifier, policy = _bin_classifier(args)
        else:
            classifier = Classifier(args.model, num_threads=args.threads)
            policy = ConfidencePolicy.from_card(classifier)
    except ConfigError as error:
        _print_config_problems(error)
        return EXIT_BAD_CONFIG
    except (ModelError, RegistryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_MODEL
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
        result = classifier.classify(frame)
        decision = policy.decide(result.label, result.confidence)
        if args.json:
            line = {
                "path": str(path),
                "class": result.label,
                "confidence": round(result.confidence, 6),
                "probabilities": {label: round(p, 6) for label, p in result.probabilities.items()},
                "inference_ms": round(result.inference_ms, 3),
                "decision": decision,
                "model": {"name": result.model_name, "version": result.model_version},
            }
            print(json.dumps(line), flush=True)
        else:
            print(
                f"{path}: {result.label} {result.confidence:.3f} -> {decision} ({result.inference_ms:.1f} ms)"
            )
    return status


def _bin_classifier(args: argparse.Namespace) -> tuple[Classifier, ConfidencePolicy]:
    """The bin's active model (from its registry) and its decision settings."""
    from recyclex_edge.config import load_config
    from recyclex_edge.decision import ConfidencePolicy
    from recyclex_edge.registry.service import open_classifier
    from recyclex_edge.registry.store import ModelStore

    config = load_config(args.config, args.overrides)
    store = ModelStore.for_config(config, os.environ)
    classifier = open_classifier(store, store.active(), num_threads=args.threads, pool_size=1)
    return classifier, ConfidencePolicy.for_model(classifier, config.decision)


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
    }
    return handlers[args.command](args)
