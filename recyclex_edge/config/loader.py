"""Reading a config: YAML with line numbers, ${...} substitution, --set overrides, readable errors.

Everything that can be wrong is collected and reported together, each problem with the file and line,
the dotted key path, the offending value and what was expected, so an operator fixes a file in one pass.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from recyclex_edge.errors import ConfigError, ConfigProblem

KeyPath = tuple[str, ...]

# ${NAME}, ${NAME:-fallback} from the environment; ${credential:NAME} from systemd's LoadCredential=.
_PLACEHOLDER = re.compile(r"\$\{(?:(credential):)?([A-Za-z_][A-Za-z0-9_.-]*)(?::-([^}]*))?\}")
_SECRET_WORDS = ("password", "secret", "token", "key")


def _is_secret(path: KeyPath) -> bool:
    return bool(path) and any(word in path[-1].lower() for word in _SECRET_WORDS)


def _shown(path: KeyPath, value: object) -> object:
    """The value as it may appear in an error message: secrets never leave the process."""
    return "<hidden>" if _is_secret(path) and value is not None else value


def _dotted(path: KeyPath) -> str:
    return ".".join(path)


class _Document:
    """A parsed YAML file plus the line on which each key path starts."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[ConfigProblem] = []
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark is not None else source
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(
                [ConfigProblem("", f"not valid YAML: {problem}; fix the syntax", source=where)]
            ) from None
        if root is not None:
            self._index(root, ())
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                [
                    ConfigProblem(
                        "", "the file must be a mapping of sections (device:, http:, ...)", data, source
                    )
                ]
            )
        self.data: dict[str, Any] = data

    def _index(self, node: yaml.Node, path: KeyPath) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                if key in seen:
                    self.problems.append(
                        ConfigProblem(
                            _dotted((*path, key)),
                            "key appears twice in the same mapping; keep one",
                            source=f"{self.source}:{key_node.start_mark.line + 1}",
                        )
                    )
                seen.add(key)
                self._index(value_node, (*path, key))
                self.lines[(*path, key)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._index(item, (*path, str(index)))

    def where(self, path: KeyPath) -> str:
        """file:line of the deepest part of `path` that the file contains."""
        for cut in range(len(path), -1, -1):
            line = self.lines.get(path[:cut])
            if line is not None:
                return f"{self.source}:{line}"
        return self.source


def _walk_strings(data: Any, path: KeyPath) -> Iterator[tuple[KeyPath, Any, Any]]:
    """(path, container, key) for every string value, so it can be replaced in place."""
    items: Any = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        child = (*path, str(key))
        if isinstance(value, str):
            yield child, data, key
        else:
            yield from _walk_strings(value, child)


def _substitute(
    data: dict[str, Any], environ: Mapping[str, str], where: _Document | None
) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    credentials_dir = environ.get("CREDENTIALS_DIRECTORY")

    for path, container, key in list(_walk_strings(data, ())):
        original: str = container[key]

        def replace(match: re.Match[str], path: KeyPath = path) -> str:
            is_credential, name, fallback = match.group(1), match.group(2), match.group(3)
            if is_credential:
                if not credentials_dir:
                    problems.append(
                        ConfigProblem(
                            _dotted(path),
                            f"needs systemd credential {name!r} but $CREDENTIALS_DIRECTORY is not set; "
                            "add LoadCredential= to the unit or use ${ENV_VAR}",
                            source=where.where(path) if where else "",
                        )
                    )
                    return ""
                try:
                    return (Path(credentials_dir) / name).read_text().strip()
                except OSError as exc:
                    problems.append(
                        ConfigProblem(
                            _dotted(path),
                            f"cannot read credential {name!r}: {exc.strerror}",
                            source=where.where(path) if where else "",
                        )
                    )
                    return ""
            if name in environ:
                return environ[name]
            if fallback is not None:
                return fallback
            problems.append(
                ConfigProblem(
                    _dotted(path),
                    f"environment variable {name} is not set; set it or write ${{{name}:-default}}",
                    source=where.where(path) if where else "",
                )
            )
            return ""

        container[key] = _PLACEHOLDER.sub(replace, original)
    return problems


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> list[ConfigProblem]:
    """Apply `dotted.key=value` strings; values are YAML scalars, typed later by the schema."""
    problems: list[ConfigProblem] = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        path = tuple(part for part in key.strip().split(".") if part)
        if not sep or not path:
            problems.append(
                ConfigProblem(key, "--set takes dotted.key=value, e.g. --set http.port=18080", item, "--set")
            )
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node: Any = data
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(
                    ConfigProblem(
                        _dotted(path[: depth + 1]),
                        "is not a section, cannot set a key inside it",
                        child,
                        "--set",
                    )
                )
                break
            node = child
        else:
            node[path[-1]] = value
    return problems


def _allowed_keys(model: type[BaseModel], path: KeyPath) -> list[str] | None:
    """The keys the schema accepts inside the mapping at `path`, for 'unknown key' messages."""
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        current = annotation if isinstance(annotation, type) else None
        if current is None:
            return None
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else None


def _field_description(model: type[BaseModel], path: KeyPath) -> str:
    """The schema's own description of the field at `path`, to say what was expected."""
    current: Any = model
    description = ""
    for part in path:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return description
        description = fields[part].description or ""
        current = fields[part].annotation
    return description


def _expectation(message: str) -> str:
    for prefix in ("Input should be ", "Value should be "):
        if message.startswith(prefix):
            message = "expected " + message[len(prefix) :]
            break
    else:
        message = message[:1].lower() + message[1:]
    return message


def _problems_from_validation(
    exc: ValidationError,
    model: type[BaseModel],
    document: _Document | None,
    overridden: set[KeyPath],
) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors():
        path = tuple(str(part) for part in error["loc"])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, path[:-1])
            message = "unknown key" + (f"; expected one of: {', '.join(allowed)}" if allowed else "")
        elif error["type"] == "missing":
            message = "required key is missing"
        else:
            message = _expectation(message)
        if path in overridden:
            source = "--set"
        elif document is not None:
            source = document.where(path)
        else:
            source = ""
        value = None if error["type"] == "missing" else _shown(path, error.get("input"))
        hint = "" if error["type"] == "extra_forbidden" else _field_description(model, path)
        problems.append(ConfigProblem(_dotted(path), message, value, source, hint))
    return problems


def load_mapping(
    model: type[BaseModel],
    path: Path | None,
    overrides: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Any:
    """Build `model` from a YAML file (or defaults when `path` is None) plus overrides.

    Raises ConfigError listing every problem found.
    """
    environ = os.environ if environ is None else environ
    document: _Document | None = None
    data: dict[str, Any] = {}
    problems: list[ConfigProblem] = []
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                [ConfigProblem("", f"cannot read the config file: {exc.strerror}", source=str(path))]
            ) from None
        document = _Document(text, str(path))
        data = document.data
        problems += document.problems
    unfilled = _substitute(data, environ, document)
    problems += unfilled
    overridden: set[KeyPath] = set()
    for item in overrides or []:
        overridden.add(tuple(part for part in item.partition("=")[0].strip().split(".") if part))
    problems += apply_overrides(data, overrides or [])
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        # A key whose placeholder could not be filled is already reported; its empty stand-in is not news.
        reported = {problem.key_path for problem in unfilled}
        problems += [
            problem
            for problem in _problems_from_validation(exc, model, document, overridden)
            if problem.key_path not in reported
        ]
        config = None
    if problems:
        raise ConfigError(problems)
    return config
