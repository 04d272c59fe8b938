"""Receiving an upload: multipart field `file` or a raw body, streamed in chunks with hard limits.

The first bytes are checked as soon as they arrive (magic bytes, not the declared type), the size is
checked on every chunk, and the whole transfer has a deadline, so a wrong, huge or trickling upload is
refused early instead of being buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from aiohttp import BodyPartReader, ClientError, web
from aiohttp.http_exceptions import BadHttpMessage

from recyclex_edge.api.errors import ApiError, clip

CHUNK_BYTES = 256 * 1024
HEAD_BYTES = 16
# Room for multipart boundaries, part headers and small extra fields around the file itself.
_MULTIPART_SLACK_BYTES = 64 * 1024
_FIELD = "file"
_MAX_NAMES_SHOWN = 5
_MAX_NAME_CHARS = 40


class Sink(Protocol):
    async def write(self, chunk: bytes) -> None: ...


@dataclass(frozen=True)
class UploadKind:
    """What an endpoint accepts: raw Content-Types, a size limit and a check of the first bytes."""

    what: str  # "a JPEG or PNG image", for messages
    raw_types: frozenset[str]
    max_bytes: int
    check_head: Callable[[bytes], bool]
    # Parts a multipart form may have up to the file; each costs a pass of the event loop's parser,
    # so 100k empty parts would hold the loop for seconds.
    max_parts: int = 8


class UploadSlots:
    """Image uploads held in memory at once (received, decoding or classifying), so the memory they
    can take is bounded: `max_uploads x http.max_upload_bytes`. Beyond it a request gets 503."""

    def __init__(self, max_uploads: int) -> None:
        self.max_uploads = max_uploads
        self.in_use = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self.in_use >= self.max_uploads:
            raise ApiError(
                503,
                f"{self.in_use} uploads are in progress, the limit; retry in a few seconds",
                reason="too_many_uploads",
                headers={"Retry-After": "2"},
            )
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1


class MemorySink:
    """Collects an image upload (bounded by max_upload_bytes) and its sha256 on the way in."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._digest = hashlib.sha256()

    async def write(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._digest.update(chunk)

    def data(self) -> bytes:
        """The upload as one bytes object; the chunks are let go, so it is not held twice."""
        data = b"".join(self._chunks)
        self._chunks = [data]
        return data

    def sha256(self) -> str:
        return self._digest.hexdigest()


class FileSink:
    """Writes a video upload to a file, in 1 MiB batches off the event loop."""

    _FLUSH_BYTES = 1024 * 1024

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._pending = bytearray()

    async def write(self, chunk: bytes) -> None:
        self._pending += chunk
        if len(self._pending) >= self._FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            await asyncio.to_thread(self._handle.write, data)


def _too_large(kind: UploadKind) -> ApiError:
    return ApiError(
        413, f"the upload is larger than {kind.max_bytes} bytes; send a smaller file", reason="too_large"
    )


def _not_accepted(kind: UploadKind) -> ApiError:
    return ApiError(
        415,
        f"the upload is not {kind.what} (checked by its content, not its name or declared type)",
        reason="unsupported_media",
    )


async def _copy(chunks: AsyncIterator[bytes], kind: UploadKind, sink: Sink) -> int:
    size = 0
    head = b""
    async for chunk in chunks:
        size += len(chunk)
        if size > kind.max_bytes:
            raise _too_large(kind)
        if len(head) < HEAD_BYTES:
            head += chunk[: HEAD_BYTES - len(head)]
            if len(head) == HEAD_BYTES and not kind.check_head(head):
                raise _not_accepted(kind)
        await sink.write(chunk)
    if 0 < len(head) < HEAD_BYTES and not kind.check_head(head):
        raise _not_accepted(kind)
    return size


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK_BYTES):
        yield chunk


def _field_names(seen: list[str]) -> str:
    """The first few field names, each clipped: an error must not echo an unbounded request."""
    shown = ", ".join(repr(clip(name, _MAX_NAME_CHARS)) for name in seen[:_MAX_NAMES_SHOWN])
    more = f" and {len(seen) - _MAX_NAMES_SHOWN} more" if len(seen) > _MAX_NAMES_SHOWN else ""
    return f" (got {shown}{more})" if seen else ""


async def _from_multipart(request: web.Request, kind: UploadKind, sink: Sink) -> int:
    reader = await request.multipart()
    seen: list[str] = []
    while (part := await reader.next()) is not None:
        if isinstance(part, BodyPartReader) and part.name == _FIELD:
            return await _copy(_part_chunks(part), kind, sink)
        seen.append(getattr(part, "name", None) or "?")
        if len(seen) >= kind.max_parts:
            raise ApiError(
                400,
                f"the multipart form has more than {kind.max_parts} parts before the field '{_FIELD}'"
                f"{_field_names(seen)}; send the file as '{_FIELD}' with few other fields",
                reason="too_many_parts",
            )
        await part.release()
    raise ApiError(
        400,
        f"the multipart form has no field '{_FIELD}'{_field_names(seen)}; send the file as '{_FIELD}'",
        reason="bad_field",
    )


async def receive_upload(request: web.Request, kind: UploadKind, sink: Sink, timeout_s: float) -> int:
    """Stream the upload into `sink`; returns its size in bytes. Raises ApiError (400/408/413/415)."""
    is_multipart = request.content_type == "multipart/form-data"
    if not is_multipart and request.content_type not in kind.raw_types:
        accepted = " or ".join(sorted(kind.raw_types))
        raise ApiError(
            415,
            f"send multipart/form-data with the field '{_FIELD}', or a raw body with Content-Type {accepted}",
            reason="unsupported_media",
        )
    declared = request.content_length
    if declared is not None and declared > kind.max_bytes + (_MULTIPART_SLACK_BYTES if is_multipart else 0):
        raise _too_large(kind)
    try:
        async with asyncio.timeout(timeout_s):
            if is_multipart:
                size = await _from_multipart(request, kind, sink)
            else:
                size = await _copy(request.content.iter_chunked(CHUNK_BYTES), kind, sink)
    except (ValueError, BadHttpMessage) as error:  # aiohttp's multipart parser on a malformed body
        raise ApiError(
            400, f"malformed multipart body: {clip(str(error), 100)}", reason="malformed"
        ) from None
    except (ClientError, ConnectionError):
        raise ApiError(400, "the upload was interrupted; send it again", reason="interrupted") from None
    except TimeoutError:
        raise ApiError(
            408,
            f"the upload took longer than {timeout_s:g} s; check the connection and retry",
            reason="timeout",
        ) from None
    if size == 0:
        raise ApiError(400, f"the upload is empty; send {kind.what}", reason="empty")
    return size
