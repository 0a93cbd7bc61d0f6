"""Shared fixtures: a catalog in a temp folder over a real landing area (local, moto, moto server)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest

from integration_hub_tests.fakes.azurite import AzuriteServer
from integration_hub_tests.fakes.moto_server import MotoServer
from integration_hub_tests.fakes.postgres_server import PostgresServer
from integration_hub_tests.fakes.salesforce import FakeSalesforce
from integration_hub_tests.scale_out_support import PASSWORD_VARIABLE, ScaleOut
from integration_hub_tests.support import BUCKET, PREFIX, Landing, local_landing_at


@pytest.fixture(autouse=True)
def _isolated_dagster_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("INTEGRATION_HUB_CATALOG", raising=False)
    monkeypatch.delenv("INTEGRATION_HUB_WAREHOUSE", raising=False)


S3_CONNECTION = {"name": "landing", "type": "s3", "bucket": BUCKET, "prefix": PREFIX, "region": "us-east-1",
                 "access_key_id": "testing", "secret_access_key": "testing"}


@contextmanager
def _moto_landing(tmp_path: Path) -> Iterator[Landing]:
    """A landing area in a bucket of moto's in-process S3."""
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield Landing("s3_mock", tmp_path, S3_CONNECTION, s3=client)


@pytest.fixture(params=["local", "s3_mock", "s3_server"])
def landing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Landing]:
    """The contract suite runs against every landing kind."""
    kind = request.param
    if kind == "local":
        yield local_landing_at(tmp_path)
        return
    if kind == "s3_mock":
        with _moto_landing(tmp_path) as landing:
            yield landing
        return
    with MotoServer() as server:
        client = boto3.client("s3", region_name="us-east-1", endpoint_url=server.endpoint_url,
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=BUCKET)
        yield Landing(kind, tmp_path, {**S3_CONNECTION, "endpoint_url": server.endpoint_url}, s3=client)


@pytest.fixture
def local_landing(tmp_path: Path) -> Landing:
    return local_landing_at(tmp_path)


@pytest.fixture(params=["local", "s3"])
def local_or_s3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Landing]:
    """A local folder, then an S3 bucket (moto in-process): the file-handling cases run on both."""
    if request.param == "local":
        yield local_landing_at(tmp_path)
        return
    with _moto_landing(tmp_path) as landing:
        yield landing


@pytest.fixture(autouse=True)
def _quiet_werkzeug() -> Iterator[None]:
    # The threaded moto server logs every request at INFO.
    werkzeug = logging.getLogger("werkzeug")
    previous = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    yield
    werkzeug.setLevel(previous)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (one per test process); tests take a database each (`new_database`)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def scale_out(tmp_path: Path, postgres: PostgresServer, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> ScaleOut:
    """A project whose lake is a PostgreSQL catalog + S3 data, with a database and prefixes of its own."""
    monkeypatch.setenv(PASSWORD_VARIABLE, postgres.password)
    return ScaleOut(tmp_path, postgres, moto_server)


@pytest.fixture(scope="module")
def azurite() -> Iterator[AzuriteServer]:
    with AzuriteServer() as server:
        yield server


@pytest.fixture
def salesforce_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token encryption key, and no proxy between the client and the fake org on loopback."""
    from cryptography.fernet import Fernet

    monkeypatch.setenv("INTEGRATION_HUB_SECRET_KEY", Fernet.generate_key().decode())
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeSalesforce]:
    from integration_hub_tests.test_salesforce_support import start_fake

    org = start_fake()
    try:
        yield org
        assert org.server_errors == []
    finally:
        org.stop()


# The slowest modules first, each kept whole (its module fixtures are made once): with
# `pytest -n 2 --dist worksteal` a long test left for the end runs alone while the other worker idles.
SLOW_MODULES_FIRST = (
    "test_scale_out_hosts.py", "test_scale_out.py", "test_demo.py", "test_durability.py",
    "test_salesforce.py", "test_cli_output.py", "test_salesforce_cli.py", "test_migrate.py",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def priority(item: pytest.Item) -> int:
        name = item.path.name
        return SLOW_MODULES_FIRST.index(name) if name in SLOW_MODULES_FIRST else len(SLOW_MODULES_FIRST)

    items.sort(key=priority)  # stable: the order within a module, and of the other modules, stays
