"""The mapping checked against `describe()` of the object, before anything is sent.

Run-stopping problems (all reported at once, each with its fix):

* the key field does not exist, cannot be filtered on, or is of a type that cannot key records;
* a mapped field does not exist, is not updateable, or its Salesforce type does not accept the
  report column's type (e.g. a VARCHAR column into a number field: cast it in the report);
* a field is mapped twice or the key field is mapped as a field (also a catalog rule);
* the report lacks the key column or a mapped column.

Value-level problems (a string over the field's length, a value outside a restricted picklist,
a null in a required field, a fraction in an integer field, a number out of range) make only
that row `invalid`; the SQL for those checks is built here as well.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..core.catalog import SalesforceIntegration
from ..core.sql import ident, literal

TEXT_TYPES = {"string", "textarea", "email", "phone", "url", "picklist", "multipicklist", "combobox",
              "encryptedstring"}
ID_TYPES = {"id", "reference"}
NUMBER_TYPES = {"double", "currency", "percent"}
INTEGER_TYPES = {"int", "long"}
KEY_TYPES = {"string", "email", "phone", "url", "picklist", "combobox", "id", "reference"}
SUPPORTED_FIELD_TYPES = TEXT_TYPES | ID_TYPES | NUMBER_TYPES | INTEGER_TYPES | {"boolean", "date", "datetime"}
ID_PATTERN = "[A-Za-z0-9]{15}([A-Za-z0-9]{3})?"

_NUMERIC = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT|"
                      r"FLOAT|REAL|DOUBLE|DECIMAL(\(\d+,\s*\d+\))?|NUMERIC(\(\d+,\s*\d+\))?|INT\d*)$")


def column_family(duckdb_type: str) -> str:
    """numeric | boolean | date | timestamp | text | other, for a DuckDB type name."""
    t = duckdb_type.upper().strip()
    if _NUMERIC.match(t):
        return "numeric"
    if t == "BOOLEAN":
        return "boolean"
    if t == "DATE":
        return "date"
    if t.startswith("TIMESTAMP"):
        return "timestamp"
    if t in ("VARCHAR", "TEXT", "STRING", "UUID") or t.startswith("VARCHAR"):
        return "text"
    return "other"


ACCEPTS: dict[str, set[str]] = {
    **{t: {"text", "numeric", "boolean", "date", "timestamp"} for t in TEXT_TYPES},
    **{t: {"text"} for t in ID_TYPES},
    **{t: {"numeric"} for t in NUMBER_TYPES | INTEGER_TYPES},
    "boolean": {"boolean"},
    "date": {"date"},
    "datetime": {"timestamp", "date"},
}
CAST_HINT = {
    "numeric": "CAST({col} AS DOUBLE)",
    "boolean": "CAST({col} AS BOOLEAN)",
    "date": "CAST({col} AS DATE)",
    "timestamp": "CAST({col} AS TIMESTAMPTZ)",
    "text": "CAST({col} AS VARCHAR)",
}


@dataclass(frozen=True)
class FieldSpec:
    """One mapped field as Salesforce describes it, with the report column feeding it."""

    column: str
    name: str  # the field's API name as Salesforce spells it
    sf_type: str
    column_type: str = "VARCHAR"
    label: str = ""
    length: int = 0
    precision: int = 0
    scale: int = 0
    nillable: bool = True
    restricted_values: tuple[str, ...] | None = None

    @property
    def family(self) -> str:
        return column_family(self.column_type)


@dataclass(frozen=True)
class KeySpec:
    column: str
    name: str
    sf_type: str

    @property
    def is_id(self) -> bool:
        return self.sf_type in ID_TYPES


@dataclass
class MappingPlan:
    """A validated mapping: what to match on and what to send."""

    object: str
    key: KeySpec
    fields: list[FieldSpec]
    problems: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        """What a snapshot row was sent to: a different object/key means nothing is unchanged."""
        return f"{self.object}.{self.key.name}"


class MappingError(Exception):
    """The mapping does not fit the object; one line per problem."""

    def __init__(self, integration: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"integration {integration!r}: the mapping does not fit Salesforce "
            f"({len(problems)} problem{'s' if len(problems) != 1 else ''}); nothing was sent:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


def _suggest(name: str, fields: dict[str, dict[str, Any]]) -> str:
    close = difflib.get_close_matches(name.lower(), list(fields), n=1, cutoff=0.75)
    return f" (did you mean {fields[close[0]]['name']!r}?)" if close else ""


def _column(columns: dict[str, str], name: str) -> tuple[str, str] | None:
    if name in columns:
        return name, columns[name]
    lowered = {c.lower(): c for c in columns}
    if name.lower() in lowered:
        real = lowered[name.lower()]
        return real, columns[real]
    return None


def validate_mapping(
    integration: SalesforceIntegration, describe: dict[str, Any], columns: dict[str, str] | None
) -> MappingPlan:
    """Check the mapping against `describe()`; `columns` (report column -> DuckDB type) when known.

    Returns the plan with `problems` filled in (empty when everything fits).
    """
    obj = describe.get("name") or integration.object
    fields = {f["name"].lower(): f for f in describe.get("fields", [])}
    problems: list[str] = []
    where = f"{obj}"
    col_list = ", ".join(columns) if columns else ""

    def column_of(name: str, what: str) -> tuple[str, str] | None:
        if columns is None:
            return name, "VARCHAR"
        found = _column(columns, name)
        if found is None:
            problems.append(
                f"report {integration.report!r} has no column {name!r} ({what}); its columns are: {col_list}. "
                "Fix the catalog or the report's SQL"
            )
        return found

    # -- key
    key_desc = fields.get(integration.salesforce_key.lower())
    key_column = column_of(integration.report_key, "report_key")
    key = KeySpec(integration.report_key, integration.salesforce_key, "string")
    if key_desc is None:
        problems.append(
            f"salesforce_key {integration.salesforce_key!r} is not a field of {where}"
            f"{_suggest(integration.salesforce_key, fields)}: use the field's API name (custom fields end in __c)"
        )
    else:
        key = KeySpec(key_column[0] if key_column else integration.report_key, key_desc["name"], key_desc["type"])
        if key_desc["type"] not in KEY_TYPES:
            problems.append(
                f"salesforce_key {key_desc['name']!r} is a {key_desc['type']} field: a key must be a text, email, "
                "phone, picklist or Id/lookup field (e.g. Email, or a text External ID field)"
            )
        elif not key_desc.get("filterable", False):
            problems.append(
                f"salesforce_key {key_desc['name']!r} of {where} is not filterable, so records cannot be looked up "
                "by it (long text areas and encrypted fields are not): choose another key field"
            )

    # -- fields
    specs: list[FieldSpec] = []
    seen: Counter[str] = Counter(f.field.lower() for f in integration.fields)
    for name, count in seen.items():
        if count > 1:
            problems.append(f"Salesforce field {name!r} is mapped {count} times: map each field once")
    if integration.salesforce_key.lower() in seen:
        problems.append(f"the key field {integration.salesforce_key!r} is also mapped as a field: remove it from fields")
    for mapping in integration.fields:
        desc = fields.get(mapping.field.lower())
        found = column_of(mapping.column, f"mapped to {mapping.field}")
        if desc is None:
            problems.append(
                f"field {mapping.field!r} does not exist on {where}{_suggest(mapping.field, fields)}: create it in "
                "Salesforce (custom fields are named like WalkMe_Onboarding_Pct__c) or fix fields[].field, and check "
                "the integration user's field-level security"
            )
            continue
        sf_type = desc["type"]
        if not desc.get("updateable", False):
            problems.append(
                f"field {desc['name']!r} of {where} is not updateable (read-only, formula, system field, or no edit "
                "access for the integration user): map a writable field or grant edit access"
            )
            continue
        if sf_type not in SUPPORTED_FIELD_TYPES:
            problems.append(
                f"field {desc['name']!r} is a {sf_type} field, which this sync cannot write: map a text, number, "
                "boolean, date, datetime, picklist or lookup field"
            )
            continue
        if found is None:
            continue
        column, column_type = found
        family = column_family(column_type)
        if columns is not None and family not in ACCEPTS[sf_type]:
            wanted = sorted(ACCEPTS[sf_type])
            hint = CAST_HINT.get(wanted[0], "").format(col=ident(column)) if len(wanted) == 1 else ""
            problems.append(
                f"column {column!r} is {column_type} but field {desc['name']!r} is a Salesforce {sf_type} field, "
                f"which takes {' or '.join(wanted)} values: "
                + (f"convert it in the report's SQL, e.g. {hint}" if hint else "convert it in the report's SQL")
            )
            continue
        restricted = None
        if sf_type in ("picklist", "multipicklist") and desc.get("restrictedPicklist"):
            restricted = tuple(str(v["value"]) for v in desc.get("picklistValues", []) if v.get("active", True))
        specs.append(
            FieldSpec(
                column=column,
                name=desc["name"],
                sf_type=sf_type,
                column_type=column_type,
                label=desc.get("label") or desc["name"],
                length=int(desc.get("length") or 0),
                precision=int(desc.get("precision") or 0),
                scale=int(desc.get("scale") or 0),
                nillable=bool(desc.get("nillable", True)),
                restricted_values=restricted,
            )
        )
    return MappingPlan(obj, key, specs, problems)


# ---------------------------------------------------------------------------- value SQL


def _double(col: str) -> str:
    return f"CAST({col} AS DOUBLE)"


def _number_text(col: str) -> str:
    x = _double(col)
    return (
        f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} = trunc({x}) AND abs({x}) < 1e15 "
        f"THEN CAST(CAST({x} AS BIGINT) AS VARCHAR) ELSE CAST({x} AS VARCHAR) END"
    )


def _timestamp_text(col: str) -> str:
    # Sessions run in UTC, so a TIMESTAMP without zone is read as UTC.
    return f"strftime(CAST({col} AS TIMESTAMPTZ), '%Y-%m-%dT%H:%M:%S.%gZ')"


def wire_sql(spec: FieldSpec, col: str) -> str:
    """VARCHAR: the value as sent (Bulk CSV cell / JSON string), NULL for 'clear the field'."""
    family = spec.family
    if spec.sf_type == "boolean":
        return f"CASE WHEN {col} THEN 'true' WHEN NOT {col} THEN 'false' END"
    if spec.sf_type in NUMBER_TYPES:
        return _number_text(col)
    if spec.sf_type in INTEGER_TYPES:
        x = _double(col)
        return f"CASE WHEN {x} = trunc({x}) AND abs({x}) < 1e18 THEN CAST(CAST({x} AS BIGINT) AS VARCHAR) END"
    if spec.sf_type == "date":
        return f"strftime({col}, '%Y-%m-%d')"
    if spec.sf_type == "datetime":
        return _timestamp_text(col)
    # text-like fields take any scalar column
    if family == "numeric":
        return _number_text(col)
    if family == "boolean":
        return f"CASE WHEN {col} THEN 'true' WHEN NOT {col} THEN 'false' END"
    if family == "date":
        return f"strftime({col}, '%Y-%m-%d')"
    if family == "timestamp":
        return _timestamp_text(col)
    # Salesforce stores an empty string as null, so '' clears the field like NULL does.
    return f"NULLIF(CAST({col} AS VARCHAR), '')"


def json_sql(spec: FieldSpec, col: str, wire: str) -> str:
    """The typed value inside the JSON payload (also what the diff compares)."""
    if spec.sf_type == "boolean":
        return f"CAST({col} AS BOOLEAN)"
    if spec.sf_type in NUMBER_TYPES:
        x = _double(col)
        return f"CASE WHEN isfinite({x}) THEN {x} END"
    if spec.sf_type in INTEGER_TYPES:
        x = _double(col)
        return f"CASE WHEN {x} = trunc({x}) AND abs({x}) < 1e18 THEN CAST({x} AS BIGINT) END"
    return wire


def problem_sql(spec: FieldSpec, col: str, wire: str) -> list[str]:
    """SQL expressions giving a reason (VARCHAR) when the value cannot go into the field, else NULL."""
    name = spec.name
    checks: list[str] = []
    if not spec.nillable and spec.sf_type != "boolean":
        checks.append(
            f"CASE WHEN {wire} IS NULL THEN {literal(f'{name}: Salesforce requires a value and this row has none')} END"
        )
    if spec.sf_type in TEXT_TYPES | ID_TYPES and spec.length > 0:
        checks.append(
            f"CASE WHEN length({wire}) > {spec.length} THEN {literal(name + ': value is ')} || length({wire}) || "
            f"{literal(f' characters, over the field length of {spec.length}')} END"
        )
    if spec.restricted_values is not None:
        allowed = ", ".join(literal(v) for v in spec.restricted_values) or "NULL"
        if spec.sf_type == "multipicklist":
            bad = f"len(list_filter(string_split({wire}, ';'), lambda v: v NOT IN ({allowed}))) > 0"
        else:
            bad = f"{wire} NOT IN ({allowed})"
        checks.append(
            f"CASE WHEN {wire} IS NOT NULL AND {bad} THEN {literal(name + ': ')} || {wire} || "
            f"{literal(' is not a value of this restricted picklist')} END"
        )
    if spec.sf_type in NUMBER_TYPES | INTEGER_TYPES:
        x = _double(col)
        checks.append(f"CASE WHEN {x} IS NOT NULL AND NOT isfinite({x}) THEN {literal(name + ': not a finite number')} END")
        if spec.sf_type in INTEGER_TYPES:
            limit = "2147483647" if spec.sf_type == "int" else "1e18"
            checks.append(
                f"CASE WHEN isfinite({x}) AND {x} <> trunc({x}) THEN {literal(name + ': not a whole number: ')} || {x} "
                f"WHEN isfinite({x}) AND abs({x}) > {limit} THEN {literal(name + ': out of range: ')} || {x} END"
            )
        elif spec.precision > 0:
            bound = 10 ** (spec.precision - spec.scale)
            checks.append(
                f"CASE WHEN isfinite({x}) AND abs({x}) >= {bound} THEN {literal(name + ': out of range: ')} || {x} || "
                f"{literal(f' (the field holds {spec.precision - spec.scale} digits before the point)')} END"
            )
    return checks
