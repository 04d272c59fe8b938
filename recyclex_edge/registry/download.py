"""Fetching a model package for `install-model`: aiohttp's client, with a size limit, a timeout and TLS
certificate verification (aiohttp's default, never switched off), and the file's sha256 checked."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import aiohttp

from recyclex_edge.errors import RegistryError

CHUNK_BYTES = 1 << 16
MAX_REDIRECTS = 3


def check_request(url: str, sha256: str) -> None:
    """Refuse what cannot be downloaded before anything is sent."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RegistryError(f"the url must be http:// or https:// with a host (got {url!r})")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
        raise RegistryError("sha256 must be the package file's sha256 as 64 hex digits")


def check_sha256(data: bytes, sha256: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256.lower():
        raise RegistryError(f"the download's sha256 is {actual}, not {sha256.lower()}; nothing was installed")


async def download(url: str, max_bytes: int, timeout_s: float) -> bytes:
    """GET `url` (TLS certificates verified), at most `max_bytes`, within `timeout_s` in all."""
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 30.0))
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, allow_redirects=True, max_redirects=MAX_REDIRECTS) as response,
        ):
            if response.status != 200:
                raise RegistryError(f"downloading {url} failed: HTTP {response.status} {response.reason}")
            if response.content_length is not None and response.content_length > max_bytes:
                raise RegistryError(
                    f"{url} is {response.content_length} bytes, over model.max_package_bytes ({max_bytes})"
                )
            chunks, size = [], 0
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise RegistryError(
                        f"{url} is over model.max_package_bytes ({max_bytes}); download stopped"
                    )
                chunks.append(chunk)
            return b"".join(chunks)
    except TimeoutError:
        raise RegistryError(f"downloading {url} took longer than {timeout_s:.0f} s") from None
    except aiohttp.ClientError as error:
        raise RegistryError(f"downloading {url} failed: {error}") from None
