"""Writing a report as one CSV file into S3, Azure Blob Storage or a local folder.

DuckDB writes the CSV itself (`COPY (SELECT ...) TO ...`): header row, RFC 4180 quoting
(fields with a comma, quote, CR or LF are quoted, quotes doubled), CRLF line ends, UTF-8.
Formula escaping happens in that SELECT, so Python never touches individual values.

The bytes go to a sink (`sinks.py`) that publishes the file atomically. Two ways to get
them there, both with bounded memory whatever the size of the report:

* ``fifo`` (the default): DuckDB writes into a named pipe; a thread drains the pipe into
  the sink (gzip-compressing on the way when asked), so the upload overlaps DuckDB's
  writing. DuckDB blocks when the upload falls behind: at most one pipe buffer, one part
  being filled and UPLOAD_CONCURRENCY parts in flight are in memory, and no disk is used.
* ``tempfile``: DuckDB writes a local file (compressing it itself), then the file is
  streamed up. The two steps do not overlap and the whole file needs local disk space;
  used where there are no named pipes (Windows).

`benchmarks/bench_export.py` measures both (fifo was as fast or faster, at about 50 MB more
peak memory); see `benchmarks/README.md`.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import duckdb

from ..core import timeouts
from ..core.catalog import AzureBlobConnection, Catalog, FileExportIntegration, LocalConnection, S3Connection
from ..core.ingest import RunRecord, new_run_id, now_utc, record_run
from ..core.sql import ident, literal
from ..core.warehouse import ensure_bookkeeping, size_bytes, table_columns
from ..reports.factory import ReportError, report_table
from .sinks import AzureBlobSink, FileSink, LocalFolderSink, S3Sink, SinkError, SinkWriter

ExportMode = Literal["fifo", "tempfile"]
DEFAULT_MODE: ExportMode = "fifo" if hasattr(os, "mkfifo") else "tempfile"
KIND = "file_export"
CHUNK = 1024 * 1024  # read size from the pipe / temp file
PIPE_SIZE = 1024 * 1024  # Linux caps unprivileged pipes at /proc/sys/fs/pipe-max-size (1 MiB default)
GZIP_LEVEL = 6  # gzip's own default
# Part (S3) / block (Azure) uploads in flight at once: object stores answer each 8 MiB request
# with some latency, so a few in parallel keep the pipe moving; memory is (this + 1) x 8 MiB.
UPLOAD_CONCURRENCY = 3
# DuckDB's memory while it writes the file: the scan streams, so a small buffer pool is as fast
# and keeps the run's peak RSS well under 1 GB whatever the report's size (see benchmarks/).
EXPORT_MEMORY_ENV = "INTEGRATION_HUB_EXPORT_MEMORY"
EXPORT_MEMORY_DEFAULT = "256MB"
PREVIEW_ROWS = 5

# OWASP "CSV Injection": a cell starting with one of these is a formula to a spreadsheet.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
CSV_OPTIONS = "FORMAT csv, HEADER true, DELIMITER ',', QUOTE '\"', ESCAPE '\"', NEW_LINE '\\r\\n'"
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"
GZIP_CONTENT_TYPE = "application/gzip"


class ExportError(Exception):
    """An export that could not be written; the message says what failed and how to fix it."""


@dataclass
class ExportResult:
    rows: int
    bytes: int
    url: str
    key: str


@dataclass
class ExportPlan:
    """Where and how one run writes its file."""

    integration: FileExportIntegration
    file_name: str
    key: str  # folder/file_name, relative to the connection's prefix
    content_type: str


# ---------------------------------------------------------------------------- naming


def render_file_name(integration: FileExportIntegration, run_start: datetime) -> str:
    """`file_name` with {date}, {timestamp} (UTC, of the run start) and {integration} filled in.

    With `compression: gzip` the name gets a `.gz` suffix unless it has one; a `.gz` name
    without compression is refused (the file would not be what its name says).
    """
    start = run_start.astimezone(timezone.utc)
    name = integration.file_name.format(
        date=start.strftime("%Y-%m-%d"),
        timestamp=start.strftime("%Y%m%dT%H%M%SZ"),
        integration=integration.name,
    ).strip()
    where = f"integration {integration.name!r} field 'file_name' {integration.file_name!r}"
    parts = [p for p in name.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts) or name.endswith("/"):
        raise ExportError(f"{where} does not name a file (no '..', not ending in '/'): fix file_name in the catalog")
    name = "/".join(parts)
    if integration.compression == "gzip":
        if not name.lower().endswith(".gz"):
            name += ".gz"
    elif name.lower().endswith(".gz"):
        raise ExportError(
            f"{where} ends in .gz but compression is not set: add `compression: gzip` or drop the .gz suffix"
        )
    return name


def plan_export(integration: FileExportIntegration, run_start: datetime) -> ExportPlan:
    file_name = render_file_name(integration, run_start)
    key = posixpath.join(integration.folder, file_name) if integration.folder else file_name
    content_type = GZIP_CONTENT_TYPE if integration.compression == "gzip" else CSV_CONTENT_TYPE
    return ExportPlan(integration, file_name, key, content_type)


# ---------------------------------------------------------------------------- sinks


def build_sink(catalog: Catalog, connection_name: str, *, for_check: bool = False) -> FileSink:
    """The sink of an `s3`, `azure_blob` or `local` connection (credentials from the catalog's ${ENV}).

    Its client has the connection's timeouts and retries (core/timeouts.py); `for_check` the
    shorter ones of `check` and `run --dry-run`.
    """
    connection = catalog.connection(connection_name)
    if isinstance(connection, LocalConnection):
        return LocalFolderSink(catalog.resolve_path(connection.path))
    if isinstance(connection, S3Connection):
        from ..core.landing import s3_client

        if for_check:
            connection = timeouts.for_check(connection)
        return S3Sink(s3_client(connection), connection.bucket, connection.prefix, max_concurrency=UPLOAD_CONCURRENCY,
                      limits=timeouts.limits_text(connection))
    if isinstance(connection, AzureBlobConnection):
        if for_check:
            connection = timeouts.for_check(connection)
        secret = connection.connection_string.get_secret_value() if connection.connection_string else None
        credential = connection.credential.get_secret_value() if connection.credential else None
        return AzureBlobSink.from_settings(
            connection.container,
            connection.prefix,
            connection_string=secret,
            account_url=connection.account_url,
            credential=credential,
            max_concurrency=UPLOAD_CONCURRENCY,
            limits=timeouts.limits_text(connection),
            **timeouts.azure_client_settings(connection),
        )
    raise ExportError(
        f"connection {connection_name!r} is a {connection.type} connection: file exports write to s3, azure_blob or local"
    )


def folder_url(sink: FileSink, folder: str) -> str:
    """The URL of an export folder (for messages), e.g. s3://bucket/prefix/folder/."""
    probe = sink.url(posixpath.join(folder, "x") if folder else "x")
    return probe[: -len("x")]


# ---------------------------------------------------------------------------- SQL


def _escaped(expression: str) -> str:
    """SQL: the VARCHAR `expression` with a leading single quote when a spreadsheet would run it."""
    # ascii() is the code point of the first character (0 for '', NULL for NULL). An OR chain,
    # not `IN (...)`: DuckDB plans a long IN list as a hash join, which does not keep the
    # report's row order in the file.
    first = f"ascii({expression})"
    test = " OR ".join(f"{first} = {ord(c)}" for c in FORMULA_PREFIXES)
    return f"CASE WHEN {test} THEN '''' || {expression} ELSE {expression} END"


def escape_formula(value: str) -> str:
    """The Python twin of the SQL escaping (for headers and previews)."""
    return "'" + value if value.startswith(FORMULA_PREFIXES) else value


def report_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    return list(table_columns(con, table).items())


def export_select(columns: list[tuple[str, str]], table: str, escape_formulas: bool) -> str:
    """The SELECT whose result is the file: every identifier quoted, VARCHAR cells escaped."""
    selects = []
    for name, data_type in columns:
        expression = ident(name)
        if escape_formulas and data_type.upper() == "VARCHAR":
            expression = _escaped(expression)
        header = escape_formula(name) if escape_formulas else name
        selects.append(f"{expression} AS {ident(header)}")
    return f"SELECT {', '.join(selects)} FROM {ident(table)}"


def copy_sql(select_sql: str, target: str, compression: str | None) -> str:
    return f"COPY ({select_sql}) TO {literal(target)} ({CSV_OPTIONS}, COMPRESSION {compression or 'none'})"


def preview_markdown(con: duckdb.DuckDBPyConnection, select_sql: str, limit: int = PREVIEW_ROWS) -> str:
    result = con.execute(f"SELECT * FROM ({select_sql}) LIMIT {int(limit)}")
    columns = [d[0] for d in result.description]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in result.fetchall():
        cells = ("" if v is None else str(v).replace("|", "\\|").replace("\r", " ").replace("\n", " ") for v in row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- streaming


class _Pump:
    """Drains a pipe into a sink writer (gzip on the way if asked); on failure stops DuckDB."""

    def __init__(self, fd: int, writer: SinkWriter, gzip: bool, stop: Any) -> None:
        self.fd = fd
        self.writer = writer
        self.compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31) if gzip else None
        self.stop = stop
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while chunk := os.read(self.fd, CHUNK):
                if self.compressor is not None:
                    chunk = self.compressor.compress(chunk)
                    if not chunk:
                        continue
                self.writer.write(chunk)
            if self.compressor is not None:
                self.writer.write(self.compressor.flush())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
            self.stop()
            # Keep draining so DuckDB is never stuck on a full pipe; it stops at the interrupt.
            try:
                while os.read(self.fd, CHUNK):
                    pass
            except OSError:
                pass


def _copy_through_fifo(
    con: duckdb.DuckDBPyConnection, select_sql: str, writer: SinkWriter, gzip: bool, work_dir: Path
) -> int:
    fifo = work_dir / "export.csv"
    os.mkfifo(fifo, 0o600)
    # Open both ends first: the reader never blocks waiting for DuckDB, and it only sees the
    # end of the file once DuckDB is done *and* we close our own write end.
    read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        keep_fd = os.open(fifo, os.O_WRONLY)
        os.set_blocking(read_fd, True)
        try:
            import fcntl

            fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except (OSError, AttributeError):
            pass  # a smaller pipe only costs a few more system calls
        running = threading.Lock()
        copying = [True]

        def stop() -> None:
            with running:
                if copying[0]:
                    con.interrupt()

        pump = _Pump(read_fd, writer, gzip, stop)
        thread = threading.Thread(target=pump.run, name="export-pump", daemon=True)
        thread.start()
        copy_error: BaseException | None = None
        rows = 0
        try:
            # DuckDB compresses nothing when writing to a pipe: the pump gzips instead.
            rows = int(con.execute(copy_sql(select_sql, str(fifo), None)).fetchone()[0])
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the pump is done
            copy_error = exc
        finally:
            with running:
                copying[0] = False
            os.close(keep_fd)
            thread.join()
    finally:
        os.close(read_fd)
    if pump.error is not None:  # the upload failed first; DuckDB's interrupt is only the echo
        raise pump.error
    if copy_error is not None:
        raise copy_error
    return rows


def _copy_through_tempfile(
    con: duckdb.DuckDBPyConnection, select_sql: str, writer: SinkWriter, gzip: bool, work_dir: Path
) -> int:
    path = work_dir / ("export.csv.gz" if gzip else "export.csv")
    rows = int(con.execute(copy_sql(select_sql, str(path), "gzip" if gzip else None)).fetchone()[0])
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK * 8):
            writer.write(chunk)
    return rows


@contextmanager
def export_memory_limit(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Lower DuckDB's memory_limit while a file is written (never raise it); restore it after."""
    wanted = os.environ.get(EXPORT_MEMORY_ENV) or EXPORT_MEMORY_DEFAULT
    current = str(con.execute("SELECT current_setting('memory_limit')").fetchone()[0])
    wanted_bytes, current_bytes = size_bytes(wanted), size_bytes(current)
    if wanted_bytes is None or current_bytes is None or wanted_bytes >= current_bytes:
        yield
        return
    con.execute(f"SET memory_limit = {literal(wanted)}")
    try:
        yield
    finally:
        con.execute(f"SET memory_limit = {literal(current)}")


def stream_report(
    con: duckdb.DuckDBPyConnection,
    select_sql: str,
    sink: FileSink,
    key: str,
    *,
    gzip: bool = False,
    overwrite: bool = False,
    content_type: str = CSV_CONTENT_TYPE,
    mode: ExportMode = DEFAULT_MODE,
    work_dir: str | os.PathLike[str] | None = None,
) -> tuple[int, int]:
    """Write the result of `select_sql` as a CSV file at `key`; returns (rows, bytes).

    The file appears atomically, or not at all; FileExistsError (before any data is produced)
    when it exists and `overwrite` is false.
    """
    copy = _copy_through_fifo if mode == "fifo" else _copy_through_tempfile
    with tempfile.TemporaryDirectory(prefix="integration-hub-export-", dir=work_dir) as tmp:
        with sink.open_write(key, overwrite=overwrite, content_type=content_type) as writer:
            with export_memory_limit(con):
                rows = copy(con, select_sql, writer, gzip, Path(tmp))
    return rows, writer.bytes_written


# ---------------------------------------------------------------------------- one run


def _failure_message(exc: BaseException, url: str) -> str:
    if isinstance(exc, SinkError | FileExistsError | ExportError | ReportError):
        return str(exc)
    if isinstance(exc, duckdb.Error):
        return f"DuckDB could not write {url}: {str(exc).splitlines()[0]}"
    if isinstance(exc, OSError):
        return f"could not write {url}: {exc}"
    return f"could not write {url}: {type(exc).__name__}: {exc}"


def run_file_export(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    integration: FileExportIntegration,
    *,
    run_start: datetime | None = None,
    dagster_run_id: str | None = None,
    sink: FileSink | None = None,
    mode: ExportMode = DEFAULT_MODE,
    log: Any = None,
) -> tuple[RunRecord, ExportResult | None, str]:
    """Export the materialized report once and record the run in `integration_runs`.

    Returns (run, result, preview). A failure is recorded as a failed run and raised as
    ExportError with the same one-line message (secrets never appear: the sinks strip them).
    """
    started = now_utc()
    run = RunRecord(
        run_id=new_run_id(),
        integration=integration.name,
        kind=KIND,
        source=integration.report,
        started_at=started,
        dagster_run_id=dagster_run_id,
    )
    url = f"connection {integration.connection!r}"
    try:
        ensure_bookkeeping(con)
        plan = plan_export(integration, run_start or started)
        run.details = {"file_name": plan.file_name}
        sink = sink or build_sink(catalog, integration.connection)
        url = sink.url(plan.key)
        run.details["target_url"] = url
        table = report_table(integration.report)
        columns = report_columns(con, table)
        if not columns:
            raise ExportError(
                f"report {integration.report!r} has not been materialized (no table {table}): run the "
                f"integration's job, which materializes the report before exporting it"
            )
        select_sql = export_select(columns, table, integration.escape_formulas)
        if log is not None:
            log.info(f"exporting report {integration.report!r} to {url} ({mode})")
        rows, size = stream_report(
            con,
            select_sql,
            sink,
            plan.key,
            gzip=integration.compression == "gzip",
            overwrite=integration.overwrite,
            content_type=plan.content_type,
            mode=mode,
        )
        preview = preview_markdown(con, select_sql)
    except Exception as exc:
        message = _failure_message(exc, url)
        run.status, run.message = "failed", message
        try:
            record_run(con, run)
        except duckdb.Error:
            pass  # the warehouse itself is the problem; the raised error says what failed
        raise ExportError(message) from exc
    run.status = "success"
    run.rows_read = run.rows_applied = rows
    run.details["bytes"] = size  # file_name and target_url were set with the plan
    run.message = f"wrote {url} ({rows} rows, {size} bytes)"
    record_run(con, run)
    return run, ExportResult(rows=rows, bytes=size, url=url, key=plan.key), preview
