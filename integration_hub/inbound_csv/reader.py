"""Reading a landed CSV file with DuckDB's reader: dialect, BOM, header, ragged rows.

The file is turned into a relation whose columns carry the catalog's source names (a
header that differs only in case or surrounding spaces still matches), plus a `_row_error`
column for rows with more cells than the header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ..core.catalog import CsvIntegration
from ..core.ingest import ROW_ERROR_COLUMN
from ..core.sql import ident, literal

_AUTO_COLUMN = re.compile(r"^column\d+$")


class CsvFileError(Exception):
    """The file cannot be used as it is; the message says what and how to fix it."""


@dataclass(frozen=True)
class CsvShape:
    header: list[str]  # the header cells as DuckDB read them
    extra_columns: list[str]  # auto-named columns holding cells beyond the header
    source_for: dict[str, str]  # catalog source name -> header cell


def _options(path: Path, integration: CsvIntegration, parallel: bool) -> str:
    options = [
        literal(str(path)),
        "header = true",
        "all_varchar = true",
        "null_padding = true",  # short rows: missing trailing cells are blank
        f"encoding = {literal(integration.encoding)}",
    ]
    if integration.delimiter:
        options.append(f"delim = {literal(integration.delimiter)}")
    if not parallel:
        options.append("parallel = false")
    return ", ".join(options)


def read_csv_sql(path: Path, integration: CsvIntegration, parallel: bool = True) -> str:
    return f"SELECT * FROM read_csv({_options(path, integration, parallel)})"


def explain_read_error(exc: duckdb.Error, integration: CsvIntegration) -> str:
    text = str(exc)
    first = text.splitlines()[0]
    if "unicode" in text.lower() or "encoding" in text.lower():
        return (
            f"the file is not valid {integration.encoding} text ({first}); save it as UTF-8, "
            "or set `encoding: latin-1` (or utf-16) on the integration"
        )
    if "sniff" in text.lower() or "dialect" in text.lower():
        return (
            f"DuckDB could not detect the CSV layout ({first}); check that the file is CSV, or set "
            "`delimiter:` on the integration"
        )
    return f"the file could not be read as CSV: {first}"


def inspect_csv(con: duckdb.DuckDBPyConnection, path: Path, integration: CsvIntegration) -> CsvShape:
    """Read the header and check the user id and every mapped column are there."""
    try:
        described = con.execute(f"DESCRIBE {read_csv_sql(path, integration)}").fetchall()
    except duckdb.Error as exc:
        raise CsvFileError(explain_read_error(exc, integration)) from None
    columns = [row[0] for row in described]
    extra = []
    while columns and _AUTO_COLUMN.match(columns[-1]) and len(columns) > 1:
        extra.insert(0, columns.pop())
    header = columns

    wanted = [integration.user_id_column, *(p.column for p in integration.properties)]
    source_for: dict[str, str] = {}
    missing = []
    for name in wanted:
        if name in header:
            source_for[name] = name
            continue
        loose = [h for h in header if h.strip().lower() == name.strip().lower()]
        if len(loose) == 1:
            source_for[name] = loose[0]
        else:
            missing.append(name)
    if missing:
        found = ", ".join(repr(h) for h in header[:30]) + (" ..." if len(header) > 30 else "")
        hint = "rename the columns in the file or fix the mapping in the catalog"
        if len(header) == 1 and any(sep in header[0] for sep in ";|\t,"):
            hint = (
                "the whole header was read as one column, so the delimiter was not recognised: "
                "set `delimiter:` on the integration (e.g. ';' or '|')"
            )
        what = "user id column" if missing[0] == integration.user_id_column else "mapped column"
        raise CsvFileError(
            f"missing {what}{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}; "
            f"the file has columns: {found}; {hint}"
        )
    return CsvShape(header=header, extra_columns=extra, source_for=source_for)


def csv_source_sql(path: Path, integration: CsvIntegration, shape: CsvShape, parallel: bool = True) -> str:
    """The relation `apply_source` reads: catalog source names, plus `_row_error` for ragged rows."""
    selects = [f"{ident(header)} AS {ident(name)}" for name, header in shape.source_for.items()]
    if shape.extra_columns:
        has_extra = " OR ".join(f"{ident(c)} IS NOT NULL" for c in shape.extra_columns)
        reason = literal(
            f"the row has more cells than the header ({len(shape.header)} columns): "
            "quote values that contain the delimiter"
        )
        selects.append(f"CASE WHEN {has_extra} THEN {reason} END AS {ident(ROW_ERROR_COLUMN)}")
    return f"SELECT {', '.join(selects)} FROM read_csv({_options(path, integration, parallel)})"


def needs_serial_scan(exc: duckdb.Error) -> bool:
    """DuckDB's parallel scanner cannot pad short rows in files with quoted newlines."""
    return "parallel=false" in str(exc)
