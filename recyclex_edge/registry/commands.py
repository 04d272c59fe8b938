"""The model commands a bin accepts over MQTT and the page's /api/commands: one place that lists them.

    install-model   {"url", "sha256", "shadow"?}  download (aiohttp: size limit, timeout, TLS verified),
                                                 verify, install; activate it, or run it as shadow
    activate-model  {"version"}                  make an installed version active (promotes a shadow)
    rollback-model  {}                           back to the version active before this one
    remove-model    {"version"}                  delete an installed version that is not active

Each answers `{"version", "detail"}` or fails with the reason; every call is in the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recyclex_edge.mqtt.commands import CALLER
from recyclex_edge.registry.service import ModelRegistry

CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]


def model_commands(registry: ModelRegistry) -> dict[str, CommandHandler]:
    def install(arguments: dict[str, Any]) -> dict[str, Any]:
        return registry.install_from_url(
            arguments["url"], arguments["sha256"], who=CALLER.get(), shadow=bool(arguments.get("shadow"))
        )

    def activate(arguments: dict[str, Any]) -> dict[str, Any]:
        return registry.activate(arguments["version"], who=CALLER.get())

    def rollback(arguments: dict[str, Any]) -> dict[str, Any]:
        return registry.rollback(who=CALLER.get())

    def remove(arguments: dict[str, Any]) -> dict[str, Any]:
        return registry.remove(arguments["version"], who=CALLER.get())

    return {
        "install-model": install,
        "activate-model": activate,
        "rollback-model": rollback,
        "remove-model": remove,
    }
