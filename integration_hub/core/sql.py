"""SQL text built from data: every identifier and literal goes through these quoting helpers."""

from __future__ import annotations

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


def blank(raw: str) -> str:
    """SQL condition: a cell with no value (NULL, empty or only whitespace)."""
    return f"({raw} IS NULL OR trim({raw}) = '')"


_DATE = r"^\d{4}-\d{2}-\d{2}$"
_DATETIME = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|z|[+-]\d{2}(:?\d{2})?)?$"


def cast_expression(raw: str, property_type: str) -> str:
    """SQL turning the VARCHAR expression `raw` into the property type; NULL when it does not cast.

    Blank cells give NULL too; callers tell the two apart with `blank(raw)`.
    """
    if property_type == "string":
        return f"CASE WHEN {blank(raw)} THEN NULL ELSE {raw} END"
    return typed_value(f"NULLIF(trim({raw}), '')", property_type)


def typed_value(cell: str, property_type: str) -> str:
    """SQL turning `cell`, a trimmed non-blank text (or NULL), into a non-string property type.

    NULL when it does not cast. Give it a column rather than an expression: it is used more than once.
    """
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
