"""The error path of reading a CSV file: find every row DuckDB cannot read, and say why.

Runs only after a read failed. One more scan of the file with DuckDB's `store_rejects` lists
each unreadable row with its row number (the header is row 1, as a spreadsheet shows it). Rows
with too few or too many cells are rejected one by one by the next read; anything else (a broken
quote, a line over the limit, bytes that are not the file's encoding) fails the whole file with a
message naming the row and the fix.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ..core.catalog import MAX_LINE_BYTES_LIMIT, CsvIntegration
from ..core.sql import ident
from .reader import CsvFileError, CsvShape, human_bytes, read_options

RAGGED = ("MISSING COLUMNS", "TOO MANY COLUMNS")
QUOTING = ("UNQUOTED VALUE", "INVALID STATE")
_SNIPPET = 60


@dataclass(frozen=True)
class Diagnosis:
    ragged_rows: bool  # some rows have fewer or more cells than the header
    widest: int  # most cells in any row


def scrub(text: str, where: str, path: Path, work_dir: Path | None = None) -> str:
    """A DuckDB message with local paths (a download is in a temporary folder) replaced by the file as the
    user knows it: s3://bucket/key or the path in the landing folder."""
    text = text.replace(str(path), where)
    if work_dir is not None:
        text = re.sub(re.escape(str(work_dir)) + r"[^\s'\"]*", lambda _: where, text)
    return text


def _snippet(csv_line: str | None) -> str:
    first = (csv_line or "").splitlines()[0] if csv_line else ""
    return first[:_SNIPPET] + ("..." if len(first) > _SNIPPET or "\n" in (csv_line or "").strip() else "")


def explain_row_problem(
    kind: str, row: int, message: str, csv_line: str | None, integration: CsvIntegration, where: str
) -> str:
    """One line for a row that stops the whole file: what, where (file and row) and how to fix it."""
    if kind in QUOTING:
        return (
            f"row {row} of {where}: a quoted value opens in this row and is not closed properly "
            f"({_snippet(csv_line)}); end every quoted value with a quote right before the next delimiter "
            'or line end, and write a quote inside a quoted value twice (""), then upload the file again'
        )
    if kind == "LINE SIZE OVER MAXIMUM":
        size = re.search(r"Actual Size:\s*(\d+)", message)
        actual = f"{human_bytes(int(size.group(1)))} long, " if size else ""
        limit = human_bytes(integration.max_line_bytes)
        if size and int(size.group(1)) > MAX_LINE_BYTES_LIMIT:
            fix = f"split the long value into smaller ones (the limit can be raised to {human_bytes(MAX_LINE_BYTES_LIMIT)} at most)"
        else:
            fix = (
                f"shorten or split the long value, or raise `max_line_bytes` on the integration "
                f"(at most {human_bytes(MAX_LINE_BYTES_LIMIT)})"
            )
        return f"row {row} of {where} is {actual}over the line limit of {limit} (max_line_bytes): {fix}"
    if kind == "INVALID ENCODING":
        return (
            f"row {row} of {where} is not valid {integration.encoding} text: save the file as UTF-8, "
            "or set `encoding: latin-1` (or utf-16) on the integration"
        )
    return f"row {row} of {where} cannot be read as CSV ({message.splitlines()[0]}); fix that row and upload the file again"


def diagnose(
    con: duckdb.DuckDBPyConnection, path: Path, integration: CsvIntegration, shape: CsvShape, where: str
) -> Diagnosis:
    """Scan the whole file once, listing the rows that do not fit; raise CsvFileError for the first fatal one."""
    suffix = uuid.uuid4().hex[:12]
    table, scans = f"_csv_rejects_{suffix}", f"_csv_reject_scans_{suffix}"
    options = read_options(path, integration, shape, extra=None)
    try:
        con.execute(
            f"SELECT count(*) FROM read_csv({options}, ignore_errors = true, store_rejects = true, "
            f"rejects_table = '{table}', rejects_scan = '{scans}')"
        ).fetchall()  # fetched to the end: the rejects tables are written only when the result is complete
        quoted = ", ".join(f"'{k}'" for k in RAGGED)
        fatal = con.execute(
            f"SELECT line, error_type, error_message, csv_line FROM {ident(table)} "
            f"WHERE error_type NOT IN ({quoted}) ORDER BY line LIMIT 1"
        ).fetchone()
        ragged, widest = con.execute(
            f"SELECT count(*) > 0, max(TRY_CAST(regexp_extract(error_message, 'Found: (\\d+)', 1) AS INTEGER)) "
            f"FROM {ident(table)} WHERE error_type IN ({quoted})"
        ).fetchone()
    finally:
        for name in (table, scans):
            con.execute(f"DROP TABLE IF EXISTS {ident(name)}")
    if fatal is not None:
        line, kind, message, csv_line = fatal
        raise CsvFileError(explain_row_problem(kind, int(line), scrub(message, where, path), csv_line, integration, where))
    return Diagnosis(ragged_rows=bool(ragged), widest=max(int(widest or 0), shape.width))


def explain_read_error(
    exc: duckdb.Error, integration: CsvIntegration, where: str, path: Path, work_dir: Path | None = None
) -> str:
    """A read error no row-by-row scan explained, in one line, with the file's own name."""
    text = scrub(str(exc), where, path, work_dir)
    first = text.splitlines()[0]
    row = re.search(r"CSV Error on Line: (\d+)", text)
    at = f"row {row.group(1)} of " if row else ""
    lower = text.lower()
    if "unicode" in lower or "encoding" in lower:
        return (
            f"{at}{where} is not valid {integration.encoding} text ({first}); save it as UTF-8, "
            "or set `encoding: latin-1` (or utf-16) on the integration"
        )
    return f"{at}{where} could not be read as CSV ({first}); check that it is a CSV file with a header row"
