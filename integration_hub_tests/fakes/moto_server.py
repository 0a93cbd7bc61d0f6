"""Run moto as a real HTTP server (in a thread) for tests that need an ``endpoint_url``.

Unlike ``moto.mock_aws`` this exercises botocore's real HTTP stack: signing,
retries, connection handling and response parsing.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from moto.server import ThreadedMotoServer

# moto accepts any credentials unless IAM auth is switched on (see ``iam_auth``).
FAKE_ACCESS_KEY_ID = "testing"
FAKE_SECRET_ACCESS_KEY = "testing"  # noqa: S105 - moto's dummy credentials


class MotoServer:
    """Context manager for a ``ThreadedMotoServer`` on a free loopback port; state is reset on exit."""

    def __init__(self, host: str = "127.0.0.1", region: str = "us-east-1") -> None:
        self.host = host
        self.region = region
        self._server: ThreadedMotoServer | None = None
        self.endpoint_url = ""

    def __enter__(self) -> MotoServer:
        # Port 0 lets the OS pick a free port atomically; ask the server which one it got.
        self._server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is None:
            return
        try:
            self.reset()
        finally:
            self._server.stop()
            self._server = None

    def reset(self) -> None:
        """Drop all emulated resources (buckets, users, ...)."""
        self._post("/moto-api/reset", b"")

    def client(
        self,
        service: str = "s3",
        *,
        aws_access_key_id: str = FAKE_ACCESS_KEY_ID,
        aws_secret_access_key: str = FAKE_SECRET_ACCESS_KEY,
        **kwargs: Any,
    ) -> Any:
        """A boto3 client pointed at this server."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            **kwargs,
        )

    @contextmanager
    def iam_auth(self) -> Iterator[None]:
        """Enforce IAM signatures and policies for requests inside the block.

        moto's server is in-process, so this flips a process-wide moto setting;
        the previous value is restored on exit.
        """
        previous = json.loads(self._post("/moto-api/reset-auth", b"0"))[
            "PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"
        ]
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", str(previous).encode())

    def _post(self, path: str, body: bytes) -> bytes:
        # Not form-encoded (urllib's default), or Flask swallows the body into request.form.
        request = urllib.request.Request(
            f"{self.endpoint_url}{path}",
            data=body,
            method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())
