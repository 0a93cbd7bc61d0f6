"""The HTTP/1.1 protocol of the API server: uvicorn's httptools protocol with limits on the request head.

uvicorn reads a request line and headers with neither a size limit nor a deadline (httptools
has none, and uvicorn's keep-alive timeout only runs between requests): one client could
send a 200 MB header, buffered whole while everyone else waits, or stall mid-header and
keep its connection forever. This protocol, selected by `serve` (`http=`):

- answers 431 as soon as the request line and headers pass `max_header_bytes`;
- answers 408 when they have not all arrived `header_timeout` seconds after the connection
  opened (or, on a kept-alive connection, after the next request's first byte); a
  connection that sends nothing is closed then;
- answers malformed HTTP with the API's JSON error shape rather than uvicorn's plain text;
- after an answer given before the request's body ended (401, 413, 415, ...), reads and
  drops the rest of the body for at most a second (and a body's limit + 1 MiB): a client
  that sends its whole body before reading sees the answer rather than a reset, and no
  client can keep a connection by trickling a body. The connection then goes on if the
  body ended and the answer allowed it, else it is closed. (uvicorn keeps reading such a
  body, each byte restarting its keep-alive timer, or, after `Connection: close`, closes at
  once and resets a client still sending.)

The body's own pace is the app's concern (`request_body.read_body`: 408).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from .settings import process_settings

LINGER_SECONDS = 1.0  # how long an answered connection still drops what the client sends
LINGER_EXTRA_BYTES = 1024 * 1024  # and how much of it at most, beyond the largest body allowed


class _HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing; httptools turns it into an HttpParserError."""


def error_response(status: int, code: str, message: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete `{error, message}` response that closes the connection."""
    body = json.dumps({"error": code, "message": message}, ensure_ascii=False, separators=(",", ":")).encode()
    head = [STATUS_LINE[status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


class _CloseAfterTheRequest:
    """The transport as a request's cycle sees it: its close() waits for the request to be read."""

    def __init__(self, protocol: ApiHttpProtocol) -> None:
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close_after_answer()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol.transport, name)


class ApiHttpProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a size limit and a deadline for each request head."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = process_settings()
        self.max_head_bytes = settings.max_header_bytes
        self.head_timeout = settings.header_timeout
        self.linger_bytes = settings.max_body_bytes + LINGER_EXTRA_BYTES
        self.head_bytes = 0  # bytes received while reading the current request head
        self.reading_head = True
        self.head_timer: asyncio.TimerHandle | None = None
        self.refusal: tuple[int, str, str] | None = None  # the answer instead of uvicorn's 400
        self.lingering = False  # answered and closing: what arrives is dropped
        self.lingered_bytes = 0
        self.draining: asyncio.TimerHandle | None = None  # answered, the body still arriving

    # -- connection -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if self.draining is not None:
            self.draining.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering or self.draining is not None:
            self.lingered_bytes += len(data)
            if self.lingered_bytes > self.linger_bytes:
                self.transport.close()
                return
        if self.lingering:
            return
        if self.reading_head:
            self.head_bytes += len(data)  # all of it is head until the parser says otherwise
            if self.head_timer is None:
                self._start_head_timer()
        super().data_received(data)  # parse errors come back through send_400_response
        if self.reading_head and self.head_bytes > self.max_head_bytes and not self.lingering:
            self._refuse(431, "headers_too_large", self._too_large_message())

    # -- parser callbacks -----------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.reading_head = False
        self._stop_head_timer()
        # The exact size, for heads that arrived together with (part of) their body.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_head_bytes:
            self.refusal = (431, "headers_too_large", self._too_large_message())
            raise _HeadTooLarge
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = _CloseAfterTheRequest(self)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_head = True
        self.head_bytes = 0
        if self.draining is not None:  # the answered request's body ended in time: carry on
            self.draining.cancel()
            self.draining = None
            self._start_head_timer()  # uvicorn's keep-alive timer stopped when the body arrived

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.lingering and not self.transport.is_closing():
            # Answered before the body ended (401, 415, ...): the parser drops the rest of it;
            # the connection goes on if it ends within a second, else it is closed.
            self.lingered_bytes = 0
            self.draining = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    # -- answers --------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        status, code, message = self.refusal or (
            400,
            "invalid_http",
            "the request is not valid HTTP/1.1 (request line, headers, Content-Length or chunked "
            "encoding): check the client",
        )
        self._refuse(status, code, message)

    def _too_large_message(self) -> str:
        return (
            f"the request line and headers are larger than {self.max_head_bytes:,} bytes: "
            "send fewer or shorter headers"
        )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer `status` on this connection, then close it."""
        self._stop_head_timer()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:  # too late for another answer
                self.transport.close()
                return
            cycle.disconnected = True  # the app's answer to this request is dropped
            cycle.message_event.set()
        if self.transport.is_closing():
            return
        self.transport.write(error_response(status, code, message, self.server_state.default_headers))
        self._linger()

    def close_after_answer(self) -> None:
        """Close now, or once the client stops sending a body it had not finished."""
        if self.cycle is not None and self.cycle.more_body:
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        """Close after the answer; until then drop what the client still sends (at most 1 s, linger_bytes)."""
        if self.transport.is_closing() or self.lingering:
            return
        self.lingering = True
        self._stop_head_timer()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.flow.resume_reading()
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    # -- the head deadline ----------------------------------------------------------------
    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self.head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.transport.is_closing() or not self.reading_head or self.lingering:
            return
        if self.head_bytes == 0:  # nothing was asked: nothing to answer
            self.transport.close()
            return
        self._refuse(
            408,
            "request_timeout",
            f"the request line and headers did not arrive within {self.head_timeout:g} s: "
            "send the whole request without pausing",
        )
