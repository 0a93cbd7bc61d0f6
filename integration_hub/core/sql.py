"""SQL text built from data: every identifier and literal goes through these quoting helpers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime

DUCKDB_TYPES: dict[str, str] = {
    "string": "VARCHAR",
    "number": "DOUBLE",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "datetime": "TIMESTAMPTZ",
}

TYPE_HINTS: dict[str, str] = {
    "number": "a number like 42 or -3.5 (dot as decimal separator, no thousands separator)",
    "boolean": "true/false, yes/no or 1/0 (any case)",
    "date": "an ISO 8601 date YYYY-MM-DD",
    "datetime": "an ISO 8601 date-time like 2024-05-01T13:45:00Z (no zone means UTC)",
}


def ident(name: str) -> str:
    """Quote an identifier for DuckDB (double quotes doubled inside)."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """Quote a string literal for DuckDB (single quotes doubled inside)."""
    return "'" + value.replace("'", "''") + "'"


def sql_value(value: object) -> str:
    """A Python value as a typed DuckDB literal, for SQL run in processes that bind no parameters.

    Binding any parameter makes DuckDB's Python client import pandas (0.5 s and 40 MB), so the
    run path writes its few values in place instead; each one quoted or cast here.
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return f"CAST({value} AS {'BIGINT' if -(2**63) <= value < 2**63 else 'HUGEINT'})"
    if isinstance(value, float):
        return f"CAST({literal(repr(value) if math.isfinite(value) else str(value))} AS DOUBLE)"
    if isinstance(value, datetime):
        return f"CAST({literal(value.isoformat())} AS {'TIMESTAMPTZ' if value.tzinfo is not None else 'TIMESTAMP'})"
    if isinstance(value, date):
        return f"CAST({literal(value.isoformat())} AS DATE)"
    if isinstance(value, str):
        if "\x00" in value:  # a NUL cannot stand inside a literal
            return "(" + " || chr(0) || ".join(literal(part) for part in value.split("\x00")) + ")"
        return literal(value)
    raise TypeError(f"no SQL literal for a {type(value).__name__}")


def sql_values(values: Sequence[object]) -> str:
    """`(v1, v2, ...)`: a row of `sql_value`s, e.g. for INSERT ... VALUES."""
    return "(" + ", ".join(sql_value(v) for v in values) + ")"


def trimmed_cell(raw: str) -> str:
    """SQL: the VARCHAR expression `raw` trimmed, NULL when it is blank (NULL, empty or only whitespace).

    DuckDB's trim() removes the Unicode space separators (category Zs) at either end and costs as
    much as reading the cell. An ASCII cell that neither starts nor ends with a space is already
    trimmed, and a byte count equal to the character count proves a cell ASCII: 8x faster.
    """
    return (
        f"CASE WHEN strlen({raw}) = length({raw}) AND NOT starts_with({raw}, ' ') AND NOT ends_with({raw}, ' ') "
        f"THEN NULLIF({raw}, '') ELSE NULLIF(trim({raw}), '') END"
    )


_DATE = r"^\d{4}-\d{2}-\d{2}$"
_DATETIME = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|z|[+-]\d{2}(:?\d{2})?)?$"


def cast_expression(raw: str, property_type: str) -> str:
    """SQL turning the VARCHAR expression `raw` into the property type; NULL when blank or when it does not cast."""
    return typed_value(trimmed_cell(raw), raw, property_type)


def typed_value(cell: str, raw: str, property_type: str) -> str:
    """SQL: a cell's value as the property type; NULL when blank or when it does not cast.

    `cell` is the cell trimmed (`trimmed_cell(raw)`), `raw` its text as read: a string keeps its
    text as it came. Give both as columns rather than expressions: they are used more than once.
    """
    if property_type == "string":
        return f"CASE WHEN {cell} IS NOT NULL THEN {raw} END"
    if property_type == "number":
        # TRY_CAST accepts 'inf' and 'nan'; an attribute must be a finite number.
        return f"CASE WHEN isfinite(TRY_CAST({cell} AS DOUBLE)) THEN TRY_CAST({cell} AS DOUBLE) END"
    if property_type == "boolean":
        return (
            f"CASE WHEN lower({cell}) IN ('true', 'yes', '1') THEN TRUE "
            f"WHEN lower({cell}) IN ('false', 'no', '0') THEN FALSE END"
        )
    if property_type == "date":
        return f"CASE WHEN regexp_matches({cell}, '{_DATE}') THEN TRY_CAST({cell} AS DATE) END"
    if property_type == "datetime":
        # The connection runs with TimeZone=UTC, so a value without a zone is read as UTC.
        return f"CASE WHEN regexp_matches({cell}, '{_DATETIME}') THEN TRY_CAST({cell} AS TIMESTAMPTZ) END"
    raise ValueError(f"unknown property type {property_type!r}")


def rejection_reason(property_type: str) -> str:
    return f"not a valid {property_type}: expected {TYPE_HINTS[property_type]}"


def hash_part(column: str, parts: int, part: int) -> str:
    """SQL: whether a row is in `part` of `parts` that split the rows by a hash of `column` (true if one part)."""
    return f"hash({column}) % {parts} = {part}" if parts > 1 else "true"


def sorted_id_hashes(relation: str) -> str:
    """SQL: the hash of each non-NULL `user_id` of `relation` (`h`) beside the next one in order (`next_h`).

    A hash that repeats sits next to itself, so `h = next_h` marks every repeat. Sorting 8-byte
    hashes is some 2x faster than counting them in a hash table (GROUP BY, count(DISTINCT)) and
    spills to disk beyond the memory limit. Equal hashes are only candidates: the ids themselves
    must be compared (two ids may share a hash).
    """
    return (
        "SELECT h, lead(h) OVER (ORDER BY h) AS next_h "
        f"FROM (SELECT hash(user_id) AS h FROM {relation} WHERE user_id IS NOT NULL)"
    )
