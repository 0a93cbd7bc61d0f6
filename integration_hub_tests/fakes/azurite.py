"""Run a real Azurite blob emulator for tests.

Azurite is installed locally with npm into ``<repo>/.tools`` (the Makefile does
the same), so tests do not depend on a global install or Docker::

    with AzuriteServer() as azurite:
        client = BlobServiceClient.from_connection_string(azurite.connection_string)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / ".tools"
AZURITE_BLOB_BIN = TOOLS_DIR / "node_modules" / ".bin" / "azurite-blob"
AZURITE_NPM_SPEC = "azurite@3"

# Azurite's well-known development account, published in Microsoft's docs; not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def ensure_azurite(install: bool = True, timeout: float = 600.0) -> Path:
    """Return the ``azurite-blob`` binary, installing ``azurite@3`` into ``<repo>/.tools`` if missing."""
    if AZURITE_BLOB_BIN.exists():
        return AZURITE_BLOB_BIN
    if not install:
        raise FileNotFoundError(f"{AZURITE_BLOB_BIN} not found; run `make tools` or npm install azurite@3")
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("Azurite needs Node.js and npm on PATH (Node 18+)")
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    # Serialise installs: parallel pytest workers would otherwise race npm.
    with open(TOOLS_DIR / ".azurite-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not AZURITE_BLOB_BIN.exists():
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--prefix", str(TOOLS_DIR), AZURITE_NPM_SPEC],
                check=True,
                timeout=timeout,
                stdout=subprocess.DEVNULL,
            )
    if not AZURITE_BLOB_BIN.exists():
        raise RuntimeError(f"npm install finished but {AZURITE_BLOB_BIN} is missing")
    return AZURITE_BLOB_BIN


def azurite_version() -> str:
    """Version of the locally installed Azurite package."""
    package = TOOLS_DIR / "node_modules" / "azurite" / "package.json"
    return str(json.loads(package.read_text())["version"])


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port (may be taken again before use; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def connection_string(blob_endpoint: str, account_key: str = ACCOUNT_KEY) -> str:
    """Connection string for the dev account at ``blob_endpoint`` (override the key to test auth failures)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={account_key};"
        f"BlobEndpoint={blob_endpoint};"
    )


class AzuriteServer:
    """Context manager running ``azurite-blob`` on a free loopback port with a temporary workspace."""

    host = "127.0.0.1"

    def __init__(self, startup_timeout: float = 30.0, install: bool = True) -> None:
        self.startup_timeout = startup_timeout
        self.install = install
        self.port: int | None = None
        self.command: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._log: Path | None = None

    @property
    def account_url(self) -> str:
        """Blob endpoint, path-style as Azurite expects: ``http://127.0.0.1:PORT/devstoreaccount1``."""
        if self.port is None:
            raise RuntimeError("AzuriteServer is not running")
        return f"http://{self.host}:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        """Connection string for the well-known ``devstoreaccount1`` account."""
        return connection_string(self.account_url)

    @property
    def account_key(self) -> str:
        """The published development account key."""
        return ACCOUNT_KEY

    def __enter__(self) -> AzuriteServer:
        binary = ensure_azurite(install=self.install)
        self._workdir = tempfile.TemporaryDirectory(prefix="azurite-")
        self._log = Path(self._workdir.name) / "azurite.log"
        try:
            # A free port can be grabbed by someone else before Azurite binds it; retry.
            for attempt in range(3):
                self.port = free_port(self.host)
                self.command = [
                    str(binary),
                    "--blobHost",
                    self.host,
                    "--blobPort",
                    str(self.port),
                    "--location",
                    str(Path(self._workdir.name) / "data"),
                    "--silent",
                    "--skipApiVersionCheck",  # the SDK may be newer than the emulator
                    "--loose",
                    "--disableTelemetry",  # on by default since 3.3x; no phoning home from CI
                ]
                if self._start():
                    return self
                if attempt == 2:
                    raise RuntimeError(f"Azurite did not start: {self._log_tail()}")
        except BaseException:
            self._stop()
            raise
        return self  # pragma: no cover - loop always returns or raises

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _start(self) -> bool:
        assert self._log is not None and self._workdir is not None
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self._workdir.name,  # Azurite may write debug files to cwd
                # Custom accounts from the environment would change which keys are valid.
                env={k: v for k, v in os.environ.items() if k != "AZURITE_ACCOUNTS"},
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False  # exited, e.g. EADDRINUSE
            if self._answers():
                return True
            time.sleep(0.1)
        self._stop_process()
        raise TimeoutError(f"Azurite did not answer within {self.startup_timeout}s: {self._log_tail()}")

    def _answers(self) -> bool:
        # Any HTTP answer (even 403 for this unauthenticated request) means it is serving.
        try:
            with urllib.request.urlopen(f"{self.account_url}?comp=properties&restype=service", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def _log_tail(self) -> str:
        if self._log is None or not self._log.exists():
            return "(no log)"
        return self._log.read_text(errors="replace")[-2000:]

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _stop(self) -> None:
        self._stop_process()
        if self._workdir is not None:
            with contextlib.suppress(OSError):
                self._workdir.cleanup()
            self._workdir = None
