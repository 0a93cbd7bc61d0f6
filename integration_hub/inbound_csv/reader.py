"""Reading a landed CSV file with DuckDB's reader: dialect, header, and the relation to apply.

The dialect is decided once, from the head of the file: the delimiter by DuckDB's sniffer (or
the catalog), quoting always RFC 4180 (`"`, doubled inside a quoted value). The whole file is
then read with exactly that dialect and the header's width, so no fallback can read correct rows
differently: a row that does not fit is an error with its row number (see diagnose.py).

Columns are read by position (`c0`, `c1`, ...) and named after the catalog's source names, so a
header that differs only in case or surrounding spaces still matches, and a duplicated header
name is seen rather than silently renamed.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from ..core.catalog import CsvIntegration
from ..core.ingest import ROW_ERROR_COLUMN
from ..core.sql import ident, literal
from .content import GzipProblem, explain_gzip, gunzip_head, not_text_problem

HEAD_BYTES = 1024 * 1024  # the head a dialect and header are read from
# Never a whole cell in real data: with it as the null string an empty cell reads as '' and only
# the cells null_padding adds are NULL, which tells a short row from one with blank cells.
_NO_NULL_STRING = "\x1f\x1e\x1f"
_DEFAULT_BUFFER = 32 * 1024 * 1024  # DuckDB's own default read buffer (16 x its 2 MB line limit)


class CsvFileError(Exception):
    """The file cannot be used as it is; the message says what, where and how to fix it."""


@dataclass(frozen=True)
class CsvDialect:
    delimiter: str
    quote: str = '"'
    escape: str = '"'


@dataclass(frozen=True)
class CsvShape:
    dialect: CsvDialect
    header: list[str]  # the header cells as they are in the file
    source_for: dict[str, int]  # catalog source name -> position in the header
    widest_sampled: int  # most cells in a row of the head (at least the header's width)
    warnings: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        return len(self.header)


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"


# --------------------------------------------------------------------------- the head of the file


def _decode(head: bytes, complete: bool, integration: CsvIntegration, where: str) -> str:
    codec = {"utf-8": "utf-8-sig", "utf-16": "utf-16", "latin-1": "latin-1"}[integration.encoding]
    try:
        return codecs.getincrementaldecoder(codec)().decode(head, final=complete)
    except UnicodeDecodeError as exc:
        line = head[: exc.start].count(b"\n") + 1
        raise CsvFileError(
            f"{where} is not valid {integration.encoding} text (byte 0x{head[exc.start]:02x} on line {line}): "
            "save it as UTF-8, or set `encoding: latin-1` (or utf-16) on the integration"
        ) from None


def _sniff_dialect(con: duckdb.DuckDBPyConnection, sample: Path, header_line: str, given: str | None) -> CsvDialect:
    """The sample's dialect: the delimiter from the catalog, else DuckDB's sniffer, else the commonest
    candidate in the header (when the sniffer fails or picks one the header does not contain)."""
    counts = {c: header_line.count(c) for c in (",", ";", "\t", "|")}
    from_header = max(counts, key=lambda c: counts[c]) if any(counts.values()) else ","
    pinned = f", delim = {literal(given)}" if given else ""
    try:
        sniffed, quote, escape = con.execute(
            f"SELECT Delimiter, Quote, Escape FROM sniff_csv({literal(str(sample))}, header = true, "
            f"null_padding = true{pinned})"
        ).fetchone()
    except duckdb.Error:
        return CsvDialect(given or from_header)
    if given:
        sniffed = given
    elif sniffed not in header_line and any(counts.values()):
        sniffed = from_header
    # Quoting is always RFC 4180 ('"', doubled inside a value), whatever the sniffer fell back to on
    # a broken sample; only a backslash escape it saw is kept, as a dialect of its own.
    return CsvDialect(sniffed, escape="\\" if (quote, escape) == ('"', "\\") else '"')


def _records(text: str, dialect: CsvDialect) -> csv.reader:
    escaped = dialect.escape != dialect.quote
    return csv.reader(
        io.StringIO(text, newline=""),
        delimiter=dialect.delimiter,
        quotechar=dialect.quote,
        doublequote=not escaped,
        escapechar=dialect.escape if escaped else None,
        strict=False,
    )


def inspect_file_head(
    con: duckdb.DuckDBPyConnection,
    raw_head: bytes,
    size: int,
    gzipped: bool,
    integration: CsvIntegration,
    where: str,
    work_dir: Path,
) -> CsvShape:
    """`inspect_head` on the first bytes of a landed file (`size` bytes in all), decompressing gzip."""
    if gzipped:
        try:
            head, complete = gunzip_head(raw_head, HEAD_BYTES)
        except GzipProblem as exc:
            raise CsvFileError(explain_gzip(str(exc), where, raw_head)) from None
    else:
        head, complete = raw_head, size <= len(raw_head)
    return inspect_head(con, head, complete, integration, where, work_dir)


def inspect_head(
    con: duckdb.DuckDBPyConnection,
    head: bytes,
    complete: bool,
    integration: CsvIntegration,
    where: str,
    work_dir: Path,
) -> CsvShape:
    """Dialect and header from the first bytes of the content; the mapped columns must be there.

    `head` is the (decompressed) start of the content and `complete` says whether it is all of it.
    """
    problem = not_text_problem(head, integration.encoding)
    if problem is not None:
        raise CsvFileError(f"{where} {problem}")
    text = _decode(head, complete, integration, where)
    if not text.strip():
        raise CsvFileError(f"{where} holds no header row (only blank lines): export it again with a header row and data rows")
    sample_text = text if complete else text[: max(text.rfind("\n"), text.rfind("\r")) + 1]
    header_line = sample_text.splitlines()[0] if sample_text else ""
    if not header_line:
        raise CsvFileError(
            f"{where}: the header row is longer than {human_bytes(HEAD_BYTES)}, so it cannot be a header; "
            "check that the file is CSV with a header row"
        )
    sample = work_dir / "head.sample"  # never a pending file name, so never the downloaded file
    sample.write_text(sample_text, encoding="utf-8")
    try:
        dialect = _sniff_dialect(con, sample, header_line, integration.delimiter)
        widest = _widest_sampled(con, sample, dialect)
    finally:
        sample.unlink(missing_ok=True)

    records = _records(sample_text, dialect)
    try:
        header = next(records)
    except csv.Error as exc:
        raise CsvFileError(f"{where}: the header row cannot be read as CSV ({exc}); check that the file is CSV") from None
    try:  # only the first non-blank record after the header is looked for
        has_data = not complete or any(any(cell.strip() for cell in record) for record in records)
    except csv.Error:  # e.g. a cell over Python's field size limit: a record all the same, DuckDB reads it
        has_data = True
    if not has_data:
        raise CsvFileError(
            f"{where} has a header row but no data rows: export it again with the data rows below the header"
        )
    source_for, warnings = map_columns(header, integration, where)
    return CsvShape(dialect, header, source_for, max(widest, len(header)), warnings)


def _widest_sampled(con: duckdb.DuckDBPyConnection, sample: Path, dialect: CsvDialect) -> int:
    """The most cells in a row of the sample, as DuckDB reads it with the dialect."""
    try:
        described = con.execute(
            f"DESCRIBE SELECT * FROM read_csv({literal(str(sample))}, header = false, all_varchar = true, "
            f"null_padding = true, parallel = false, delim = {literal(dialect.delimiter)}, "
            f"quote = {literal(dialect.quote)}, escape = {literal(dialect.escape)})"
        ).fetchall()
    except duckdb.Error:
        return 0  # the head does not parse; reading the whole file will say where
    return len(described)


# --------------------------------------------------------------------------- header -> mapping


def _columns_text(header: list[str], positions: list[int]) -> str:
    names = {header[i] for i in positions}
    numbers = " and ".join(str(i + 1) for i in positions)
    if len(names) == 1:
        return f"{header[positions[0]]!r} {len(positions)} times (columns {numbers})"
    return " and ".join(f"{header[i]!r} (column {i + 1})" for i in positions)


def map_columns(header: list[str], integration: CsvIntegration, where: str) -> tuple[dict[str, int], list[str]]:
    """The header position of the user id and each mapped column, and warnings about the rest.

    Names match ignoring case and surrounding spaces. A mapped name that matches two columns is
    ambiguous and fails the file; a duplicate among unmapped columns only earns a warning.
    """
    positions: dict[str, list[int]] = defaultdict(list)
    for position, cell in enumerate(header):
        positions[cell.strip().lower()].append(position)
    wanted = [(integration.user_id_column, f"the user id column {integration.user_id_column!r}")] + [
        (p.column, f"the column {p.column!r} of property {p.name!r}") for p in integration.properties
    ]
    source_for: dict[str, int] = {}
    missing: list[str] = []
    ambiguous: list[str] = []
    for name, role in wanted:
        matches = positions.get(name.strip().lower(), [])
        if len(matches) == 1:
            source_for[name] = matches[0]
        elif not matches:
            missing.append(name)
        elif name not in source_for:
            ambiguous.append(f"{_columns_text(header, matches)}, so {role} is ambiguous")
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
            f"{where}: missing {what}{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}; "
            f"the file has columns: {found}; {hint}"
        )
    if ambiguous:
        raise CsvFileError(
            f"the header of {where} has {'; '.join(ambiguous)} (names match ignoring case and surrounding spaces): "
            "rename or remove the duplicate columns so each mapped name appears once, then upload the file again"
        )
    used = set(source_for.values())
    warnings = [
        f"the header has {_columns_text(header, group)}; that column is not mapped, so none of them is read"
        for name, group in positions.items()
        if name and len(group) > 1 and not used.intersection(group)
    ]
    return source_for, warnings


# --------------------------------------------------------------------------- reading the whole file


def read_options(
    path: Path, integration: CsvIntegration, shape: CsvShape, extra: int | None, parallel: bool = True
) -> str:
    """read_csv options: the shape's dialect and width, nothing left to detect.

    `extra` None reads strictly: every row must have the header's width, else DuckDB stops with
    the row. A number reads ragged rows too: short rows are padded and that many cells beyond the
    header are kept, so `csv_source_sql` can reject such rows one by one.
    """
    width = shape.width + (extra or 0)
    columns = "{" + ", ".join(f"{literal(f'c{i}')}: 'VARCHAR'" for i in range(width)) + "}"
    dialect = shape.dialect
    options = [
        literal(str(path)),
        "auto_detect = false",
        "header = true",
        "skip = 0",
        f"delim = {literal(dialect.delimiter)}",
        f"quote = {literal(dialect.quote)}",
        f"escape = {literal(dialect.escape)}",
        f"columns = {columns}",
        f"encoding = {literal(integration.encoding)}",
        f"max_line_size = {int(integration.max_line_bytes)}",
        f"buffer_size = {max(_DEFAULT_BUFFER, 4 * int(integration.max_line_bytes))}",
    ]
    if extra is not None:
        options += ["null_padding = true", f"nullstr = {literal(_NO_NULL_STRING)}"]
    if not parallel:
        options.append("parallel = false")
    return ", ".join(options)


def _cells(columns: list[str], plus: int = 0) -> str:
    """SQL text: 'N cells', N the number of the columns that were present in the row (plus `plus`)."""
    count = " + ".join([str(plus)] * bool(plus) + [f"CAST({c} IS NOT NULL AS INTEGER)" for c in columns])
    return f"({count}) || CASE WHEN ({count}) = 1 THEN ' cell' ELSE ' cells' END"


def csv_source_sql(
    path: Path, integration: CsvIntegration, shape: CsvShape, extra: int | None, parallel: bool = True
) -> str:
    """The relation `apply_source` reads: catalog source names, plus `_row_error` for ragged rows."""
    selects = [f"{ident(f'c{position}')} AS {ident(name)}" for name, position in shape.source_for.items()]
    if extra is not None:
        width = shape.width
        header_cells = [ident(f"c{i}") for i in range(width)]
        extra_cells = [ident(f"c{i}") for i in range(width, width + extra)]
        short = (
            f"WHEN {header_cells[-1]} IS NULL THEN 'the row has ' || {_cells(header_cells)} || "
            + literal(
                f", the header has {width}: add the missing cells (blank cells still need their delimiters, "
                "as in a,,c) and quote values that contain a line break"
            )
        )
        cases = [short]
        if extra_cells:
            # Blank cells past the header (a trailing delimiter) hold nothing and are let through.
            non_blank = " OR ".join(f"trim({c}) <> ''" for c in extra_cells)
            cases.append(
                f"WHEN {non_blank} THEN 'the row has ' || {_cells(extra_cells, width)} || "
                + literal(f", the header has {width}: quote values that contain the delimiter")
            )
        selects.append(f"CASE {' '.join(cases)} END AS {ident(ROW_ERROR_COLUMN)}")
    return f"SELECT {', '.join(selects)} FROM read_csv({read_options(path, integration, shape, extra, parallel)})"


def needs_serial_scan(exc: duckdb.Error) -> bool:
    """DuckDB's parallel scanner cannot pad short rows in files with quoted newlines."""
    return "parallel=false" in str(exc)
