"""The streaming core of file exports: DuckDB's CSV, byte for byte, through a pipe or a temp file.

Multipart-sized reports, both modes, gzip, and failures in the middle of a stream (an upload
that breaks, a query that breaks): nothing is published and no multipart upload is left behind.
"""

from __future__ import annotations

import gzip
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pytest
from moto import mock_aws

from integration_hub.exports.export import copy_sql, export_select, report_columns, stream_report
from integration_hub.exports.sinks import S3Sink, SinkError
from integration_hub_tests.fakes.moto_server import MotoServer
from integration_hub_tests.test_exports_support import SlowPartUploads

ROWS = 250_000  # ~16 MiB of CSV: three parts of 8 MiB
BIG_REPORT = f"""
CREATE TABLE report_big AS
SELECT 'user' || i || '@example.com' AS email,
       CASE i % 5 WHEN 0 THEN '=formula' || i WHEN 1 THEN 'comma, "quoted"' WHEN 2 THEN 'line' || chr(10) || 'break'
                  WHEN 3 THEN 'ünïcødé ✓' ELSE NULL END AS note,
       i * 1.5 AS score, i % 2 = 0 AS active, DATE '2024-01-01' + (i % 365)::INTEGER AS signup
FROM range({ROWS}) t(i)
"""


@pytest.fixture(scope="module")
def con(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(tmp_path_factory.mktemp("wh") / "warehouse.duckdb"))
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute(BIG_REPORT)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def floor_csv(con: duckdb.DuckDBPyConnection, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """DuckDB's own COPY of the same SELECT to a local file: what the export must upload, byte for byte."""
    path = tmp_path_factory.mktemp("floor") / "floor.csv"
    con.execute(copy_sql(_select(con), str(path), None))
    return path.read_bytes()


def _select(con: duckdb.DuckDBPyConnection, escape: bool = True) -> str:
    return export_select(report_columns(con, "report_big"), "report_big", escape)


@contextmanager
def _bucket() -> Iterator[tuple[Any, str]]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        bucket = f"exp-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        yield client, bucket


@pytest.mark.parametrize("mode", ["fifo", "tempfile"])
@pytest.mark.parametrize("compress", [False, True], ids=["csv", "gzip"])
def test_multipart_export_is_duckdbs_csv_byte_for_byte(
    con: duckdb.DuckDBPyConnection, floor_csv: bytes, mode: str, compress: bool
) -> None:
    with _bucket() as (client, bucket):
        sink = S3Sink(client, bucket, "exports")
        rows, size = stream_report(con, _select(con), sink, "big.csv", gzip=compress, mode=mode)  # type: ignore[arg-type]
        data = client.get_object(Bucket=bucket, Key="exports/big.csv")["Body"].read()
        etag = client.head_object(Bucket=bucket, Key="exports/big.csv")["ETag"]
    assert rows == ROWS and size == len(data)
    assert (gzip.decompress(data) if compress else data) == floor_csv
    if not compress:
        assert etag.strip('"').endswith("-2")  # 16 MiB: a real multipart upload of 2 parts
    assert floor_csv.count(b"'=formula") == ROWS // 5


def test_file_keeps_the_report_row_order(floor_csv: bytes) -> None:
    """The report table's order (its ORDER BY) is the file's order, also with formula escaping on."""
    emails = re.findall(rb"\r\nuser(\d+)@", floor_csv)
    assert [int(e) for e in emails] == list(range(ROWS))


def test_escaping_does_not_change_anything_else(con: duckdb.DuckDBPyConnection, floor_csv: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "raw.csv"
    con.execute(copy_sql(_select(con, escape=False), str(raw), None))
    assert floor_csv.replace(b"'=formula", b"=formula") == raw.read_bytes()


class _BreakingSink:
    """A real S3 sink whose upload breaks after some bytes, as a dropped connection would."""

    def __init__(self, sink: S3Sink, after: int) -> None:
        self.sink = sink
        self.after = after

    def url(self, key: str) -> str:
        return self.sink.url(key)

    @contextmanager
    def open_write(self, key: str, **kwargs: Any) -> Iterator[Any]:
        with self.sink.open_write(key, **kwargs) as writer:
            after = self.after

            class Breaking:
                bytes_written = 0

                def write(self, data: bytes) -> None:
                    writer.write(data)
                    if writer.bytes_written > after:
                        raise SinkError("Could not upload part 2 of s3://...: the connection was dropped")

            yield Breaking()


@pytest.mark.parametrize("mode", ["fifo", "tempfile"])
def test_upload_failure_mid_stream_publishes_nothing(
    con: duckdb.DuckDBPyConnection, moto_server: MotoServer, mode: str
) -> None:
    client = moto_server.client()
    bucket = f"exp-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    sink = _BreakingSink(S3Sink(client, bucket, "exports"), after=9 * 1024 * 1024)
    started = time.monotonic()
    with pytest.raises(SinkError, match="connection was dropped"):
        stream_report(con, _select(con), sink, "big.csv", mode=mode)  # type: ignore[arg-type]
    assert time.monotonic() - started < 30  # DuckDB was stopped, not left blocked on a full pipe
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert con.execute("SELECT 42").fetchone() == (42,)  # the connection is still usable


def test_query_failure_mid_stream_publishes_nothing(con: duckdb.DuckDBPyConnection, moto_server: MotoServer) -> None:
    client = moto_server.client()
    bucket = f"exp-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    failing = (
        "SELECT repeat('x', 100) || i AS filler, CASE WHEN i < 200000 THEN i ELSE error('boom at ' || i) END AS n "
        "FROM range(300000) t(i)"
    )
    with pytest.raises(duckdb.Error, match="boom at"):
        stream_report(con, failing, S3Sink(client, bucket, "exports"), "big.csv")
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_existing_file_is_refused_before_duckdb_runs(con: duckdb.DuckDBPyConnection) -> None:
    with _bucket() as (client, bucket):
        client.put_object(Bucket=bucket, Key="exports/big.csv", Body=b"old")
        with pytest.raises(FileExistsError, match="already exists"):
            stream_report(con, "SELECT error('must not run')", S3Sink(client, bucket, "exports"), "big.csv")
        assert client.get_object(Bucket=bucket, Key="exports/big.csv")["Body"].read() == b"old"


def test_report_order_by_survives_materialization_and_export(tmp_path: Path) -> None:
    from integration_hub.core.catalog import Report
    from integration_hub.reports.factory import materialize_report

    db = duckdb.connect(str(tmp_path / "w.duckdb"))
    db.execute("CREATE TABLE src AS SELECT 'u' || i AS id, '=x' || i AS v, hash(i) AS h FROM range(300000) t(i)")
    materialize_report(db, Report(name="ranked", sql="SELECT id, v, h FROM src ORDER BY h DESC"))
    path = tmp_path / "out.csv"
    db.execute(copy_sql(export_select(report_columns(db, "report_ranked"), "report_ranked", True), str(path), None))
    lines = path.read_bytes().split(b"\r\n")[1:-1]
    hashes = [int(line.rsplit(b",", 1)[1]) for line in lines]
    assert len(hashes) == 300000 and hashes == sorted(hashes, reverse=True)
    assert all(line.split(b",")[1].startswith(b"'=x") for line in lines[:10])
    db.close()


def test_sink_concurrency_is_bounded_and_keeps_part_order() -> None:
    """Exports upload up to UPLOAD_CONCURRENCY parts at once; parts still complete in order."""
    from integration_hub.exports.export import UPLOAD_CONCURRENCY

    with _bucket() as (client, bucket):
        # Odd and even parts take different times, so they finish out of order.
        uploads = SlowPartUploads(client, lambda part: 0.05 * (1 + part["PartNumber"] % 2))
        sink = S3Sink(client, bucket, "", max_concurrency=UPLOAD_CONCURRENCY)
        data = b"".join(bytes([65 + n]) * (8 * 1024 * 1024) for n in range(6)) + b"tail"
        with sink.open_write("ordered.bin") as writer:
            for start in range(0, len(data), 3_000_001):
                writer.write(data[start : start + 3_000_001])
        assert uploads.max_active == UPLOAD_CONCURRENCY
        assert client.get_object(Bucket=bucket, Key="ordered.bin")["Body"].read() == data
