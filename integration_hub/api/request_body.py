"""Reading a request body: its media type, its content coding, its size and its pace.

- `Content-Type` must be `application/json` (a `charset` parameter, if any, `utf-8`): 415.
- `Content-Encoding` may be `gzip` (or `identity`); anything else is 415. A gzip body is
  decompressed while it arrives, and the size limit holds for the decompressed bytes too
  (a small body cannot inflate past it: 413 as soon as it would).
- The body is counted while it arrives (413 past the limit, without reading the rest),
  and a client that pauses longer than `idle_timeout` mid-body gets 408.
"""

from __future__ import annotations

import asyncio
import zlib

from starlette.requests import ClientDisconnect, Request

JSON = "application/json"
GZIP_MAX_MEMBERS = 16  # a gzip body may be several gzip files one after another; a few suffice


class BodyRefused(Exception):
    """The request is answered `status` with `{error: code, message}`; nothing was accepted."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def check_media_type(content_type: str | None) -> None:
    """415 unless the body is declared as JSON in UTF-8."""
    fix = "send the body as UTF-8 JSON with the header 'Content-Type: application/json'"
    if not content_type:
        raise BodyRefused(415, "unsupported_media_type", f"the request has no Content-Type: {fix}")
    media_type, *parameters = content_type.split(";")
    if media_type.strip().lower() != JSON:
        raise BodyRefused(
            415,
            "unsupported_media_type",
            f"Content-Type {media_type.strip()[:100]!r} is not supported: {fix}",
        )
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise BodyRefused(
                415, "unsupported_media_type", f"charset {charset[:40]!r} is not supported: {fix}"
            )


def content_coding(content_encoding: str | None) -> str:
    """'identity' or 'gzip'; 415 for any other Content-Encoding (or more than one)."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return "identity"
    if codings in (["gzip"], ["x-gzip"]):
        return "gzip"
    raise BodyRefused(
        415,
        "unsupported_content_encoding",
        f"Content-Encoding {content_encoding.strip()[:100]!r} is not supported: "  # type: ignore[union-attr]
        "send the body uncompressed or with 'Content-Encoding: gzip'",
    )


def too_large(limit: int, length: int | None = None, decompressed: bool = False) -> BodyRefused:
    if decompressed:
        size = "the body decompresses to more than"
    elif length:
        size = f"the body is {length:,} bytes, over"
    else:
        size = "the body is larger than"
    return BodyRefused(
        413,
        "payload_too_large",
        f"{size} the limit of {limit:,} bytes: send fewer records per request",
        {"Connection": "close"},
    )


class _Gunzip:
    """Decompresses gzip while it arrives; never holds more than `limit` decompressed bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.members = 1
        self.chunks: list[bytes] = []
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> None:
        try:
            while data:
                # max_length: at most one byte past the limit, so a bomb stops right there
                out = self._inflate.decompress(data, self.limit - self.size + 1)
                self.size += len(out)
                if self.size > self.limit:
                    raise too_large(self.limit, decompressed=True)
                self.chunks.append(out)
                if self._inflate.eof:
                    data = self._inflate.unused_data
                    if data:
                        self.members += 1
                        if self.members > GZIP_MAX_MEMBERS:
                            raise _invalid_gzip(f"more than {GZIP_MAX_MEMBERS} gzip members")
                        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                else:
                    data = self._inflate.unconsumed_tail
        except zlib.error as exc:  # "Error -3 while decompressing data: incorrect header check"
            raise _invalid_gzip(str(exc).rpartition(": ")[2]) from None

    def finish(self) -> bytes:
        if not self._inflate.eof:
            raise _invalid_gzip("it ends before the gzip data does")
        return b"".join(self.chunks)


def _invalid_gzip(reason: str) -> BodyRefused:
    return BodyRefused(
        400,
        "invalid_encoding",
        f"the body is not valid gzip data ({reason}): compress the whole body with gzip, "
        "or send it uncompressed without Content-Encoding",
    )


async def read_body(request: Request, limit: int, idle_timeout: float) -> bytes:
    """The request body (decompressed), counted while it arrives; BodyRefused or ClientDisconnect."""
    coding = content_coding(request.headers.get("content-encoding"))
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large(limit, int(length))  # uvicorn refuses a malformed Content-Length before us
    gunzip = _Gunzip(limit) if coding == "gzip" else None
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        try:
            message = await asyncio.wait_for(request.receive(), idle_timeout)
        except asyncio.TimeoutError:
            raise BodyRefused(
                408,
                "request_timeout",
                f"the body stopped arriving for {idle_timeout:g} s: send the whole body without pausing",
                {"Connection": "close"},
            ) from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        if gunzip is not None:
            gunzip.feed(chunk)
        else:
            chunks.append(chunk)
    if gunzip is not None:
        return gunzip.finish() if size else b""
    return b"".join(chunks)
