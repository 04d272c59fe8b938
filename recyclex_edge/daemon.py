"""The Daemon: wires the stages together and owns the lifecycle (start, serve, stop in reverse order).

Stages never reach into each other; they meet here. A stage that cannot start (a model that fails to
load, say) is reported in the health registry and the daemon keeps serving `/health`, so a technician
can see what is wrong instead of a unit in a restart loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from recyclex_edge import __version__
from recyclex_edge.api import build_app
from recyclex_edge.classifier import Classifier
from recyclex_edge.config import Config
from recyclex_edge.errors import ModelError
from recyclex_edge.health import HealthRegistry, Status

log = logging.getLogger("recyclex_edge.daemon")


def load_classifier(config: Config, health: HealthRegistry) -> Classifier | None:
    """The classifier, or None (reported as failing) when the model cannot be used."""
    try:
        classifier = Classifier(
            config.model.path, num_threads=config.model.num_threads, pool_size=config.model.pool_size
        )
    except ModelError as error:
        log.error("classifier unavailable: %s", error)
        health.report("classifier", Status.FAILING, str(error))
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
    """One bin: its classifier, its API, and whatever stages the config enables."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.health = HealthRegistry()
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        classifier = load_classifier(self.config, self.health)
        app = build_app(self.config, classifier, self.health)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.config.http.host, self.config.http.port)
        try:
            await site.start()
            log.info(
                "recyclex-edge %s serving http://%s:%d (device %s)",
                __version__,
                self.config.http.host,
                self.config.http.port,
                self.config.device.id,
            )
            await self._stop.wait()
            log.info("stopping")
        finally:
            await runner.cleanup()


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
        return 0

    return asyncio.run(main())
