"""One exception hierarchy for the whole daemon.

Callers catch the narrowest class they can act on; `RecycleXError` is the root so that the CLI can turn
any of them into a clear message and an exit status instead of a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class RecycleXError(Exception):
    """Root of every error this package raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration, located as precisely as we can."""

    key_path: str
    message: str
    value: object = None
    source: str = ""  # "file.yaml:12", "--set", "environment" ...
    hint: str = ""  # what the key is for, from the schema's description

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        shown = "" if self.value is None else f" (got {self.value!r})"
        hint = f" -- {self.hint}" if self.hint else ""
        return f"{where}{self.key_path or '<root>'}: {self.message}{shown}{hint}"


class ConfigError(RecycleXError):
    """The configuration cannot be used; `problems` lists every reason, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ModelError(RecycleXError):
    """The model or its card is missing, corrupt or inconsistent; the classifier cannot start."""


class ImageDecodeError(RecycleXError):
    """Bytes that should be an image are not one we can read."""


class RegistryError(RecycleXError):
    """A model package, signing key or model registry operation was refused; nothing was changed."""


class PackageError(RegistryError):
    """A model package is not valid: not a package, truncated, tampered, unsigned or untrusted."""
