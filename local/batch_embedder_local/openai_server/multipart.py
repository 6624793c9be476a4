"""Streaming request bodies and a streaming ``multipart/form-data`` parser.

The openai SDK (3.54, on httpx2) uploads files as ``multipart/form-data`` with a
``Content-Length``: the ``purpose`` field first, then ``file`` with a filename and
``application/octet-stream`` (or a type guessed from a real file's name). Uploads of up to
512 MB must not sit in memory, so the body is parsed as it arrives: small fields are kept in
memory (at most 1 MiB each), file fields go straight to a file on disk. The ``cgi`` module
is deprecated and ``email.parser`` would load the whole body, hence this parser.
``Transfer-Encoding: chunked`` bodies are accepted too.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = [
    "BodyTooLarge",
    "MultipartError",
    "Part",
    "iter_body",
    "parse_multipart_stream",
    "read_body",
]

CHUNK = 1 << 20
#: Largest non-file form field kept in memory, bytes.
MAX_FIELD_BYTES = 1 << 20
#: Largest header block of one part, bytes.
MAX_PART_HEADER_BYTES = 64 * 1024


class Readable(Protocol):
    """What is needed of a request stream (``BaseHTTPRequestHandler.rfile``)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...


class BodyTooLarge(Exception):
    """The body (or a part) passed its size limit; the body was still read to the end."""


class MultipartError(ValueError):
    """The body is not valid multipart/form-data."""


def iter_body(rfile: Readable, content_length: int | None, chunked: bool) -> Iterator[bytes]:
    """Yield the request body in pieces of at most 1 MiB (``Content-Length`` or chunked)."""
    if chunked:
        while True:
            line = rfile.readline(65537)
            if not line:
                raise MultipartError("truncated chunked body")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            remaining = size
            while remaining:
                data = rfile.read(min(CHUNK, remaining))
                if not data:
                    raise MultipartError("truncated chunked body")
                remaining -= len(data)
                yield data
            rfile.readline(3)  # CRLF closing the chunk
    else:
        remaining = content_length or 0
        while remaining:
            data = rfile.read(min(CHUNK, remaining))
            if not data:
                return
            remaining -= len(data)
            yield data


def read_body(rfile: Readable, content_length: int | None, chunked: bool, limit: int) -> bytes:
    """The whole body in memory (JSON requests).

    Raises:
        BodyTooLarge: longer than ``limit`` bytes (the rest is drained).
    """
    buf = io.BytesIO()
    too_large = False
    for data in iter_body(rfile, content_length, chunked):
        if buf.tell() + len(data) > limit:
            too_large = True
            continue
        buf.write(data)
    if too_large:
        raise BodyTooLarge
    return buf.getvalue()


@dataclass
class Part:
    """One form field. File fields have ``path`` (on disk); others ``value`` (bytes).

    ``size`` counts every byte received, also past the limit (then ``truncated`` is set and
    the stored content is incomplete).
    """

    name: str
    filename: str | None
    content_type: str | None
    path: Path | None = None
    value: bytes = b""
    size: int = 0
    truncated: bool = False
    _sink: BinaryIO | io.BytesIO | None = field(default=None, repr=False)
    _limit: int = 0

    def _write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.size > self._limit:
            self.truncated = True
            return
        assert self._sink is not None
        self._sink.write(data)

    def _close(self) -> None:
        if isinstance(self._sink, io.BytesIO):
            self.value = self._sink.getvalue()
        if self._sink is not None:
            self._sink.close()
        self._sink = None


def _boundary(content_type_header: str) -> bytes:
    msg = Message()
    msg["content-type"] = content_type_header
    boundary = msg.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise MultipartError("missing boundary in Content-Type")
    return boundary.encode("latin-1")


def parse_multipart_stream(
    chunks: Iterator[bytes],
    content_type_header: str,
    new_file_path: Callable[[], Path],
    file_limit: int,
) -> dict[str, Part]:
    """Parse a multipart body as it streams in.

    Args:
        chunks: the body, e.g. from :func:`iter_body`.
        content_type_header: the request's ``Content-Type`` (carries the boundary).
        new_file_path: gives a fresh path for each file field's content.
        file_limit: bytes kept per file field; more is counted in ``Part.size`` but dropped.

    Returns:
        Field name -> :class:`Part`. The caller owns (and must delete) the files.

    Raises:
        MultipartError: malformed body. Files already written are removed.
    """
    delim = b"--" + _boundary(content_type_header)
    sep = b"\r\n" + delim
    parts: dict[str, Part] = {}
    buf = bytearray()
    state = "preamble"
    current: Part | None = None
    it = iter(chunks)
    exhausted = False

    def more() -> bool:
        nonlocal exhausted
        if exhausted:
            return False
        try:
            buf.extend(next(it))
        except StopIteration:
            exhausted = True
            return False
        return True

    try:
        while True:
            if state == "preamble":
                pos = buf.find(delim)
                if pos < 0:
                    if len(buf) > len(delim):
                        del buf[: len(buf) - len(delim)]
                    if not more():
                        raise MultipartError("boundary not found")
                    continue
                del buf[: pos + len(delim)]
                state = "after_delim"
            elif state == "after_delim":
                if len(buf) < 2 and more():
                    continue
                if buf[:2] == b"--":
                    break  # closing delimiter; ignore the epilogue
                if buf[:2] != b"\r\n":
                    raise MultipartError("malformed delimiter line")
                del buf[:2]
                state = "headers"
            elif state == "headers":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_PART_HEADER_BYTES:
                        raise MultipartError("part headers too long")
                    if not more():
                        raise MultipartError("part headers not terminated")
                    continue
                headers = BytesHeaderParser().parsebytes(bytes(buf[: end + 4]))
                del buf[: end + 4]
                name = headers.get_param("name", header="content-disposition")
                filename = headers.get_filename()
                current = Part(
                    name if isinstance(name, str) else "",
                    filename,
                    headers.get("content-type"),
                )
                if filename is not None:
                    current.path = new_file_path()
                    current._sink = current.path.open("wb")
                    current._limit = file_limit
                else:
                    current._sink = io.BytesIO()
                    current._limit = MAX_FIELD_BYTES
                state = "body"
            else:  # body
                assert current is not None
                pos = buf.find(sep)
                if pos >= 0:
                    current._write(bytes(buf[:pos]))
                    current._close()
                    if current.name:
                        old = parts.pop(current.name, None)
                        if old is not None and old.path is not None:
                            old.path.unlink(missing_ok=True)
                        parts[current.name] = current
                    elif current.path is not None:
                        current.path.unlink(missing_ok=True)
                    current = None
                    del buf[: pos + len(sep)]
                    state = "after_delim"
                    continue
                keep = len(sep) - 1
                if len(buf) > keep:
                    current._write(bytes(buf[: len(buf) - keep]))
                    del buf[: len(buf) - keep]
                if not more():
                    raise MultipartError("closing boundary not found")
        for _ in it:  # drain an epilogue, if any
            pass
    except BaseException:
        if current is not None:
            current._close()
            if current.path is not None:
                current.path.unlink(missing_ok=True)
        for part in parts.values():
            if part.path is not None:
                part.path.unlink(missing_ok=True)
        for _ in it:  # keep the connection in sync
            pass
        raise
    return parts
