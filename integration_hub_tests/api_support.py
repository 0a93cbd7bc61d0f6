"""Helpers for the End User Update API tests: a catalog, tokens, and the real server as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from integration_hub.core.catalog import Catalog, load_catalog

WEB_INTEGRATION: dict[str, Any] = {
    "name": "web",
    "type": "api",
    "system": "main_site",
    "environment": "production",
    "user_id_property": "userId",
    "properties": [
        {"property": "planTier", "name": "plan_tier", "type": "string"},
        {"property": "visits", "name": "visits", "type": "number"},
        {"property": "isActive", "name": "is_active", "type": "boolean"},
        {"property": "signup", "name": "signup_day", "type": "date"},
        {"property": "lastSeen", "name": "last_seen_at", "type": "datetime"},
    ],
}
QA_INTEGRATION: dict[str, Any] = {
    "name": "qa_feed",
    "type": "api",
    "system": "main_site",
    "environment": "qa",
    "user_id_property": "id",
    "properties": [{"property": "score", "name": "qa_score", "type": "number"}],
}
OFF_INTEGRATION: dict[str, Any] = {
    "name": "legacy_feed",
    "type": "api",
    "system": "old_site",
    "environment": "production",
    "user_id_property": "userId",
    "enabled": False,
    "properties": [{"property": "tier", "name": "legacy_tier", "type": "string"}],
}
CSV_INTEGRATION: dict[str, Any] = {
    "name": "crm",
    "type": "s3_csv",
    "connection": "drop",
    "folder": "crm",
    "user_id_column": "email",
    "properties": [{"column": "plan", "name": "crm_plan", "type": "string"}],
}


def write_catalog(root: Path, *integrations: dict[str, Any]) -> Catalog:
    """A catalog in `root` with a local CSV integration and the given API integrations."""
    (root / "landing").mkdir(parents=True, exist_ok=True)
    document = {
        "warehouse": {"catalog": "catalog.sqlite", "data_path": "lake/"},
        "landing": "data/api_landing",
        "connections": [{"name": "drop", "type": "local", "path": "landing"}],
        "integrations": [
            CSV_INTEGRATION,
            *(integrations or (WEB_INTEGRATION, QA_INTEGRATION, OFF_INTEGRATION)),
        ],
    }
    path = root / "integrations.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_catalog(path)


def catalog_path(catalog: Catalog) -> Path:
    return Path(catalog.base_dir) / "integrations.yaml"


@dataclass
class Tokens:
    bearer: str
    integration: dict[str, str] = field(default_factory=dict)


def issue_tokens(catalog: Catalog, bearer_name: str = "acme") -> Tokens:
    from integration_hub.api.tokens import TokenStore

    store = TokenStore(catalog.landing_path)
    tokens = Tokens(store.create_bearer(bearer_name))
    for integration in catalog.integrations:
        if integration.type == "api":
            tokens.integration[integration.name] = store.issue_integration_token(integration.name)
    store.close()
    return tokens


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiServer:
    """`python -m integration_hub.api api` as a real subprocess on a free loopback port."""

    def __init__(self, catalog: Catalog, dagster_home: Path, *args: str, log: Path | None = None) -> None:
        self.catalog = catalog
        self.dagster_home = dagster_home
        self.args = list(args)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = log or Path(catalog.base_dir) / "api-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ApiServer:
        self.port = free_port()
        env = {**os.environ, "DAGSTER_HOME": str(self.dagster_home), "PYTHONUNBUFFERED": "1"}
        env.pop("INTEGRATION_HUB_CATALOG", None)
        command = [
            sys.executable, "-m", "integration_hub.api", "--catalog", str(catalog_path(self.catalog)),
            "api", "--port", str(self.port), "--no-access-log", *self.args,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the API server exited with {self.process.returncode}:\n{self.log.read_text()}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the API server did not start within {timeout} s:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, as in a crash."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def apply_batches(catalog: Catalog, integration: str = "web") -> Any:
    """Run the integration's job in-process, as the sensor's run would."""
    import dagster as dg

    from integration_hub.definitions import build_definitions

    job = build_definitions(catalog).resolve_job_def(f"{integration}_job")
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance)
    assert result.success
    return result


def landed(catalog: Catalog) -> list[Path]:
    """Every batch file in the landing folder, whatever its integration or state."""
    return sorted(catalog.landing_path.glob("*/*/*.ndjson"))


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The answer is `status` with exactly `{error: code, message}` as JSON; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] == code, body
    assert body["message"]
    return body["message"]


@dataclass
class RawAnswer:
    """An HTTP answer read from a raw socket."""

    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    closed: bool  # the server closed the connection after it


def read_raw_answer(sock: socket.socket) -> RawAnswer:
    """Read one answer (with Content-Length) from `sock`, and whether the server closed after it."""
    import json

    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without an answer after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    try:
        closed = sock.recv(1) == b""
    except ConnectionResetError:
        closed = True
    except TimeoutError:  # still open when the socket's timeout passed
        closed = False
    return RawAnswer(int(lines[0].split()[1]), headers, json.loads(rest[:length]), closed)
