"""Helpers (no tests) for the file export tests: targets (moto, moto server, Azurite), a catalog, seed data."""

from __future__ import annotations

import csv
import io
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import yaml

from integration_hub.core.catalog import Catalog, load_catalog
from integration_hub.core.state import job_name
from integration_hub.core.warehouse import ensure_schema, open_reader, open_writer, transaction
from integration_hub_tests.fakes.azurite import AzuriteServer
from integration_hub_tests.fakes.moto_server import MotoServer
from integration_hub_tests.support import lake_settings

AZURE_ENV = "EXPORT_TEST_AZURE_CONNECTION_STRING"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

PEOPLE_INTEGRATION: dict[str, Any] = {
    "name": "people",
    "type": "s3_csv",
    "connection": "landing",
    "folder": "people",
    "user_id_column": "email",
    "properties": [
        {"column": "name", "name": "full_name", "type": "string"},
        {"column": "note", "name": "note", "type": "string"},
        {"column": "score", "name": "score", "type": "number"},
        {"column": "active", "name": "active", "type": "boolean"},
        {"column": "signup", "name": "signup", "type": "date"},
    ],
}
REPORT_SQL = "SELECT user_id AS email, full_name, note, score, active, signup FROM user_profiles ORDER BY user_id"

# (user_id, full_name, note, score, active, signup): everything a CSV writer can get wrong.
TRICKY_ROWS: list[tuple[Any, ...]] = [
    ("a01@example.com", "Zoë Ünicode 日本語 🙂", "plain", 1.5, True, date(2024, 5, 1)),
    ("a02@example.com", "Comma, Inside", 'quote "inside" here', -5.0, False, date(2023, 1, 31)),
    ("a03@example.com", "Line\nBreak", "cr\r\nlf and a lone\rcr", 0.0, None, None),
    ("a04@example.com", '=HYPERLINK("http://evil.example","click")', "+1", None, True, date(2020, 2, 29)),
    ("a05@example.com", "-2+3", "@SUM(A1:A2)", 42.0, True, None),
    ("a06@example.com", "\tTabbed", "\rCarriage", 7.25, False, None),
    ("a07@example.com", "'already quoted", " =leading space", 3.0, None, None),
    ("a08@example.com", "", None, None, None, None),
    ("a09@example.com", "=", "-", None, None, None),
]


@dataclass
class Target:
    """Where an export writes, with direct SDK access to read back what really landed."""

    kind: str
    connection: dict[str, Any]
    read: Callable[[str], bytes]  # full key / blob name -> bytes
    names: Callable[[], list[str]]
    content_type: Callable[[str], str | None]
    pending_uploads: Callable[[], int] = lambda: 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return self.connection.get("prefix", "")


def s3_target(kind: str, client: Any, endpoint_url: str | None = None, bucket: str | None = None) -> Target:
    bucket = bucket or f"exp-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    connection = {
        "name": "outbox",
        "type": "s3",
        "bucket": bucket,
        "prefix": "exports",
        "region": "us-east-1",
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    if endpoint_url:
        connection["endpoint_url"] = endpoint_url
    return Target(
        kind=kind,
        connection=connection,
        read=lambda key: client.get_object(Bucket=bucket, Key=key)["Body"].read(),
        names=lambda: sorted(
            o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])
        ),
        content_type=lambda key: client.head_object(Bucket=bucket, Key=key).get("ContentType"),
        pending_uploads=lambda: len(client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])),
        extra={"client": client, "bucket": bucket},
    )


def azure_target(server: AzuriteServer, monkeypatch: Any) -> Target:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(server.connection_string)
    container = service.create_container(f"exp-{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv(AZURE_ENV, server.connection_string)
    return Target(
        kind="azurite",
        connection={
            "name": "outbox",
            "type": "azure_blob",
            "container": container.container_name,
            "prefix": "exports",
            "connection_string": "${" + AZURE_ENV + "}",
        },
        read=lambda key: container.download_blob(key, decompress=False).readall(),
        names=lambda: sorted(b.name for b in container.list_blobs()),
        content_type=lambda key: container.get_blob_client(key).get_blob_properties().content_settings.content_type,
        extra={"container": container, "service": service},
    )


def local_target(root: Path) -> Target:
    """A folder on this machine; names are relative to `root`, the connection's path is root/exports."""
    folder = root / "exports"

    def names() -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []

    return Target(
        kind="local",
        connection={"name": "outbox", "type": "local", "path": str(folder)},
        read=lambda key: (root / key).read_bytes(),
        names=names,
        content_type=lambda key: None,  # a folder keeps no content type: the name says .csv / .csv.gz
    )


@contextmanager
def make_target(kind: str, request: Any, monkeypatch: Any) -> Iterator[Target]:
    if kind == "local":
        yield local_target(request.getfixturevalue("tmp_path_factory").mktemp("outbox"))
    elif kind == "moto":
        from moto import mock_aws

        with mock_aws():
            yield s3_target("moto", boto3.client("s3", region_name="us-east-1"))
    elif kind == "moto_server":
        server: MotoServer = request.getfixturevalue("moto_server")
        yield s3_target("moto_server", server.client(), server.endpoint_url)
    else:
        yield azure_target(request.getfixturevalue("azurite"), monkeypatch)


def write_catalog(
    root: Path,
    connection: dict[str, Any],
    export: dict[str, Any] | None = None,
    *,
    report_sql: str = REPORT_SQL,
    more_integrations: list[dict[str, Any]] | None = None,
) -> Catalog:
    (root / "landing").mkdir(exist_ok=True)
    integration = {"name": "daily", "type": "file_export", "connection": "outbox", "report": "people_report",
                   "folder": "daily", **(export or {})}
    document = {
        "warehouse": lake_settings(root),
        "landing": str(root / "api_landing"),
        "connections": [connection, {"name": "landing", "type": "local", "path": str(root / "landing")}],
        "integrations": [PEOPLE_INTEGRATION, integration, *(more_integrations or [])],
        "reports": [{"name": "people_report", "sql": report_sql}],
    }
    path = root / "integrations.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return load_catalog(path)


def seed(catalog: Catalog, rows: list[tuple[Any, ...]]) -> None:
    """Attribute rows straight into attributes_people (the schema made by the real code)."""
    with open_writer(catalog) as con, transaction(con):  # one snapshot, not one per row
        ensure_schema(con, catalog)
        con.execute("DELETE FROM attributes_people")
        if rows:
            stamp = datetime(2024, 6, 1, tzinfo=timezone.utc)
            con.executemany(
                "INSERT INTO attributes_people VALUES (?, ?, ?, ?, ?, ?, ?, 'test')",
                [(*row, stamp) for row in rows],
            )


def run_export_job(
    catalog: Catalog, name: str = "daily", instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    """Run the export's job; pass `instance` to read the run's tags afterwards."""
    from integration_hub.definitions import build_definitions

    job = build_definitions(catalog).resolve_job_def(job_name(catalog.integration(name)))
    if instance is not None:
        return job.execute_in_process(instance=instance, raise_on_error=False)
    with dg.DagsterInstance.ephemeral() as ephemeral:
        return job.execute_in_process(instance=ephemeral, raise_on_error=False)


def export_runs(catalog: Catalog, name: str = "daily") -> list[dict[str, Any]]:
    import json

    with open_reader(catalog) as con:
        result = con.execute(
            "SELECT * FROM integration_runs WHERE integration = ? ORDER BY started_at", [name]
        )
        names = [d[0] for d in result.description]
        runs = [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    for run in runs:
        run["details"] = json.loads(run["details"]) if run["details"] else {}
    return runs


def expected_rows(catalog: Catalog, report: str = "people_report", escape: bool = True) -> list[list[str]]:
    """The report as the file must show it: header first, every value as DuckDB renders it as text,
    NULL as '', and (independently of the code under test) formula-looking VARCHARs prefixed with '."""
    with open_reader(catalog) as con:
        table = f"report_{report}"
        columns = con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
            "ORDER BY ordinal_position",
            [table],
        ).fetchall()
        casts = ", ".join(f'CAST("{name}" AS VARCHAR)' for name, _ in columns)
        values = con.execute(f'SELECT {casts} FROM "{table}"').fetchall()
    rows = [[name for name, _ in columns]]
    for row in values:
        cells = []
        for (_, data_type), value in zip(columns, row, strict=True):
            text = "" if value is None else value
            if escape and data_type == "VARCHAR" and text[:1] in FORMULA_START and text:
                text = "'" + text
            cells.append(text)
        rows.append(cells)
    return rows


def parse_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


class SlowPartUploads:
    """Stands in for a boto3 client's `upload_part`: waits `delay(kwargs)` seconds, then calls the
    real one, recording each part's size and the most uploads that ran at once."""

    def __init__(self, client: Any, delay: Callable[[dict[str, Any]], float]) -> None:
        self.sizes: list[int] = []
        self.max_active = 0
        self._active = 0
        self._lock = threading.Lock()
        self._delay = delay
        self._upload_part = client.upload_part
        client.upload_part = self

    def __call__(self, **kwargs: Any) -> Any:
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        try:
            time.sleep(self._delay(kwargs))
            self.sizes.append(len(kwargs["Body"]))
            return self._upload_part(**kwargs)
        finally:
            with self._lock:
                self._active -= 1
