"""install-model's download (aiohttp's client) against real servers on loopback: size limit, timeout,
and a TLS certificate no trusted CA signed."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from recyclex_edge.errors import RegistryError
from recyclex_edge.registry.download import download
from tests.mqtt.support import free_port, make_tls_files

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MIB = 1024 * 1024


async def two_mib(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()  # chunked: no Content-Length to refuse it early
    await response.prepare(request)
    for _ in range(32):
        await response.write(b"\0" * (64 * 1024))
    return response


async def trickle(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    for _ in range(100):
        await response.write(b"R")
        await asyncio.sleep(0.1)
    return response


async def small(request: web.Request) -> web.Response:
    return web.Response(body=b"RXMODEL1 ...")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Callable[[bool], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(tls: bool) -> str:
        app = web.Application()
        app.router.add_get("/two-mib", two_mib)
        app.router.add_get("/trickle", trickle)
        app.router.add_get("/small", small)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        context = None
        if tls:
            files = make_tls_files(tmp_path)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(files.server_cert, files.server_key)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_a_download_stops_at_the_size_limit(server: Callable[[bool], Awaitable[str]]) -> None:
    url = await server(False)
    assert await download(f"{url}/small", MIB, 10) == b"RXMODEL1 ..."
    with pytest.raises(RegistryError, match=r"over model\.max_package_bytes"):
        await download(f"{url}/two-mib", MIB, 10)


async def test_a_download_that_trickles_times_out(server: Callable[[bool], Awaitable[str]]) -> None:
    url = await server(False)
    started = asyncio.get_running_loop().time()
    with pytest.raises(RegistryError, match="took longer than 1 s"):
        await download(f"{url}/trickle", MIB, 1.0)
    assert asyncio.get_running_loop().time() - started < 5


async def test_tls_certificates_are_verified(server: Callable[[bool], Awaitable[str]]) -> None:
    url = await server(True)  # signed by the tests' own CA, which the bin does not trust
    with pytest.raises(RegistryError, match="certificate verify failed"):
        await download(f"{url}/small", MIB, 10)
