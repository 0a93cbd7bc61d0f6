"""Outbound clients against storage and orgs that misbehave.

Unreachable or silent endpoints (S3, Azure, Salesforce) fail within the connection's timeouts, a
wrong S3 secret is told from a missing permission, a missing Azure container is found first. Each
case runs the command a user would (`run`, `check`) and expects one line saying why.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration_hub.cli.main import main
from integration_hub_tests.fakes.azurite import ACCOUNT_NAME, AzuriteServer, connection_string
from integration_hub_tests.fakes.moto_server import MotoServer
from integration_hub_tests.test_exports_support import TRICKY_ROWS, export_runs, seed, write_catalog

# Short limits so the tests are quick; the bound they promise is the same formula as the defaults'.
LIMITS = {"connect_timeout_seconds": 1, "read_timeout_seconds": 1, "max_retries": 1}
# (max_retries + 1) x timeout, plus Azure's backoff before the one retry (1 + 2 s, +/- 1 s of jitter).
AZURE_BOUND = 2 * 1 + 4
# botocore standard mode waits a random 0..1 s before the first retry.
S3_BOUND = 2 * 1 + 1
SLACK = 3  # a loaded machine: thread start-up, DNS-free loopback connects


def run_failure(capsys: pytest.CaptureFixture[str], root: Path) -> str:
    capsys.readouterr()
    code = main(["--catalog", str(root / "integrations.yaml"), "run", "daily"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and len(err.splitlines()) == 1, out + err
    return err.strip()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


def _azure_catalog(root: Path, monkeypatch: pytest.MonkeyPatch, endpoint: str, overwrite: bool = False,
                   **extra: Any) -> None:
    monkeypatch.setenv("EXPORT_AZ", connection_string(endpoint))
    connection = {"name": "outbox", "type": "azure_blob", "container": "exports", "prefix": "hub",
                  "connection_string": "${EXPORT_AZ}", **LIMITS, **extra}
    seed(write_catalog(root, connection, {"overwrite": overwrite}), TRICKY_ROWS[:2])


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_to_a_closed_azure_port_fails_within_the_timeouts(
    closed_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    overwrite: bool,
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port}/{ACCOUNT_NAME}"
    _azure_catalog(tmp_path, monkeypatch, endpoint, overwrite)  # with overwrite, the target is checked too
    line = run_failure(capsys, tmp_path)
    assert line.startswith("error: daily failed: Could not check whether a blob exists at "
                           f"{endpoint}/exports/hub/daily/daily_"), line
    assert (f"the Azure Blob endpoint {endpoint} is unreachable (gave up after 2 attempts, connect timeout 1 s, "
            "read timeout 1 s); check `account_url`/BlobEndpoint") in line
    assert "AccountKey" not in line
    [run] = export_runs(load(tmp_path))
    assert run["status"] == "failed" and run_seconds(run) <= AZURE_BOUND + SLACK


def test_export_to_a_silent_azure_endpoint_fails_within_the_timeouts(
    silent_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"http://127.0.0.1:{silent_port}/{ACCOUNT_NAME}"
    _azure_catalog(tmp_path, monkeypatch, endpoint)
    line = run_failure(capsys, tmp_path)
    assert (f"the connection to {endpoint} timed out or was dropped (gave up after 2 attempts, connect timeout 1 s, "
            "read timeout 1 s); retry, and check the network") in line, line
    [run] = export_runs(load(tmp_path))
    # At least the two read timeouts, at most the stated bound.
    assert 2 <= run_seconds(run) <= AZURE_BOUND + SLACK


def test_export_to_a_silent_s3_endpoint_fails_within_the_timeouts(
    silent_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    connection = {"name": "outbox", "type": "s3", "bucket": "exports", "region": "us-east-1",
                  "endpoint_url": f"http://127.0.0.1:{silent_port}", "access_key_id": "testing",
                  "secret_access_key": "testing", **LIMITS}
    seed(write_catalog(tmp_path, connection), TRICKY_ROWS[:2])
    line = run_failure(capsys, tmp_path)
    assert (f"the connection to http://127.0.0.1:{silent_port} timed out or was dropped (gave up after 2 attempts, "
            "connect timeout 1 s, read timeout 1 s)") in line, line
    [run] = export_runs(load(tmp_path))
    assert 2 <= run_seconds(run) <= S3_BOUND + SLACK


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_missing_azure_container_is_found_before_streaming(
    azurite: AzuriteServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    overwrite: bool,
) -> None:
    _azure_catalog(tmp_path, monkeypatch, azurite.account_url, overwrite, container="no-such-container")
    line = run_failure(capsys, tmp_path)
    # The existence check (before DuckDB writes anything) says it, not "Could not upload block 1".
    assert re.search(
        rf"Could not check whether a blob exists at {re.escape(azurite.account_url)}/no-such-container/hub/daily/"
        rf"daily_\w+\.csv: container 'no-such-container' does not exist in {re.escape(azurite.account_url)}; "
        r"create it or fix `container` on the connection\.",
        line,
    ), line
    assert "block" not in line


# ---------------------------------------------------------------------------- S3 credentials vs permissions


def _iam_user(moto: MotoServer, name: str, actions: list[str]) -> dict[str, str]:
    iam = moto.client("iam")
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.put_user_policy(UserName=name, PolicyName="export", PolicyDocument=json.dumps(policy))
    return {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}


def _s3_catalog(root: Path, moto: MotoServer, bucket: str, key: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_S3_SECRET", key["secret_access_key"])
    connection = {"name": "outbox", "type": "s3", "bucket": bucket, "region": "us-east-1",
                  "endpoint_url": moto.endpoint_url, "access_key_id": key["access_key_id"],
                  "secret_access_key": "${EXPORT_S3_SECRET}"}
    seed(write_catalog(root, connection), TRICKY_ROWS[:2])


def test_a_wrong_s3_secret_is_reported_as_a_bad_signature_not_a_permission(
    moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    moto_server.client().create_bucket(Bucket="signed-exports")
    key = _iam_user(moto_server, "exporter", ["s3:*"])
    wrong = {**key, "secret_access_key": "wrong-secret-wrong-secret-wrong-secret0"}
    _s3_catalog(tmp_path, moto_server, "signed-exports", wrong, monkeypatch)
    with moto_server.iam_auth():  # moto checks signatures and policies only with IAM auth on
        line = run_failure(capsys, tmp_path)
    # The existence check is a HEAD, whose 403 has no body: the GET that follows names the cause.
    assert ("Could not check whether an object exists at s3://signed-exports/daily/daily_") in line
    assert ("the request signature does not match; the AWS secret access key is wrong (or does not belong to "
            "the access key id), or the system clock is off.") in line, line
    assert "access denied" not in line and wrong["secret_access_key"] not in line


def test_a_missing_s3_permission_is_reported_as_one(
    moto_server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    moto_server.client().create_bucket(Bucket="locked-exports")
    key = _iam_user(moto_server, "writer-only", ["s3:PutObject"])  # may write, may not read or list
    _s3_catalog(tmp_path, moto_server, "locked-exports", key, monkeypatch)
    with moto_server.iam_auth():
        line = run_failure(capsys, tmp_path)
    assert ("access denied; grant s3:GetObject and s3:ListBucket (needed unless `overwrite: true`) on "
            "arn:aws:s3:::locked-exports/* to the configured identity") in line, line
    assert "signature" not in line and key["secret_access_key"] not in line


# ---------------------------------------------------------------------------- helpers


def load(root: Path) -> Any:
    from integration_hub.core.catalog import load_catalog

    return load_catalog(root / "integrations.yaml")


def run_seconds(run: dict[str, Any]) -> float:
    return (run["finished_at"] - run["started_at"]).total_seconds()


# ---------------------------------------------------------------------------- Salesforce


@pytest.mark.usefixtures("salesforce_environment")
@pytest.mark.parametrize("endpoint", ["closed", "silent"])
def test_salesforce_check_against_an_unreachable_org_fails_within_the_timeouts(
    fake: Any, closed_port: int, silent_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], endpoint: str
) -> None:
    import time

    from integration_hub_tests.test_salesforce_support import connect
    from integration_hub_tests.test_salesforce_support import write_catalog as write_sf_catalog

    port = closed_port if endpoint == "closed" else silent_port
    catalog = write_sf_catalog(tmp_path, fake, connection={
        "login_url": f"https://127.0.0.1:{port}", "timeout_seconds": 1, "connect_timeout_seconds": 1})
    connect(catalog, fake)
    capsys.readouterr()
    started = time.monotonic()
    code = main(["--catalog", str(tmp_path / "integrations.yaml"), "check", "onboarding_to_salesforce"])
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 1
    assert (f"FAIL onboarding_to_salesforce: cannot reach 127.0.0.1:{port} for the refresh-token login "
            f"({'ConnectionError' if endpoint == 'closed' else 'ReadTimeout'}): check the network") in out, out
    # The login is tried 3 times, each within the 1 s timeouts, with 0.5 s and 1 s between.
    assert elapsed <= 3 * 1 + 1.5 + SLACK
