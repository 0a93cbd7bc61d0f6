"""Validating End User Update API records against an integration's mapping, in Python.

The API answers per record before anything reaches DuckDB, so these validators accept
exactly what the DuckDB casts of `core/sql.py` accept for a CSV cell (where the two could
only differ on exotic input, Python is the stricter one), and turn every accepted value
into a canonical string that DuckDB casts to the same value:

- string: any text; blank (empty or only spaces) means "no value".
- number: JSON numbers and numeric strings, finite only; written as Python's `repr`.
- boolean: JSON true/false, and true/false, yes/no, 1/0 in any case; written 'true'/'false'.
- date: `YYYY-MM-DD`; written as is.
- datetime: ISO 8601 (`YYYY-MM-DD[( |T)HH:MM[:SS[.fraction]]][Z|+HH[[:]MM]]`), no zone
  means UTC; written in UTC as `YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00`.

A batch is validated with closures built once per integration (`compile_mapping`), so a
500-record request costs a few milliseconds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from ..core.catalog import ApiIntegration
from ..core.sql import rejection_reason
from .document import LongInteger

# DuckDB's trim() removes exactly the Unicode space separators (category Zs), not tabs or
# newlines; the CSV path trims with it, so the API does the same.
DUCKDB_TRIM = (
    " \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
)
MAX_USER_ID_CHARS = 1024
MAX_PROBLEMS = 1000  # problems listed in one response; the count of rejected records is always exact
MAX_UNKNOWN_LISTED = 10  # unknown properties listed one by one per record; one more problem counts the rest

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}(?::?\d{2})?)?)?",
    re.ASCII,
)
_TRUE = frozenset(("true", "yes", "1"))
_FALSE = frozenset(("false", "no", "0"))


class InvalidValue(ValueError):
    """A value that does not cast to its property type; the message says what is expected."""


def _nested() -> InvalidValue:
    return InvalidValue("nested objects and arrays are not supported: send a string, number, boolean or null")


def _expected(property_type: str) -> InvalidValue:
    return InvalidValue(rejection_reason(property_type))  # the same words as a rejected CSV cell


def _text(value: Any) -> str | None:
    """A JSON scalar as the text a CSV cell would hold (None for null)."""
    if value is None or isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValue("not a finite number")
        return repr(value)
    raise _nested()


def _trimmed(value: Any) -> str | None:
    """The cell's text without the blanks DuckDB's trim() removes; None for a blank cell."""
    text = _text(value)
    if text is None:
        return None
    return text.strip(DUCKDB_TRIM) or None


def cast_string(value: Any) -> str | None:
    text = _text(value)
    if text is None or not text.strip(DUCKDB_TRIM):
        return None
    return text


def cast_number(value: Any) -> str | None:
    if isinstance(value, bool):
        raise _expected("number")
    if isinstance(value, LongInteger):
        raise InvalidValue("not a finite number: too large for a double")
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:
            raise InvalidValue("not a finite number: too large for a double") from None
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValue("not a finite number")
        return repr(value)
    text = _trimmed(value)
    if text is None:
        return None
    if not text.isascii():
        raise _expected("number")
    try:
        number = float(text)
    except ValueError:
        raise _expected("number") from None
    if not math.isfinite(number):
        raise _expected("number")
    return repr(number)


def cast_boolean(value: Any) -> str | None:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        raise _expected("boolean")
    text = _trimmed(value)
    if text is None:
        return None
    lowered = text.lower() if text.isascii() else ""
    if lowered in _TRUE:
        return "true"
    if lowered in _FALSE:
        return "false"
    raise _expected("boolean")


def cast_date(value: Any) -> str | None:
    text = _trimmed(value)
    if text is None:
        return None
    match = _DATE.fullmatch(text)
    if match is None:
        raise _expected("date")
    try:
        date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise _expected("date") from None
    return text


def parse_datetime(text: str) -> datetime:
    """An ISO 8601 date-time as DuckDB's TIMESTAMPTZ cast reads it (no zone = UTC), in UTC."""
    match = _DATETIME.fullmatch(text)
    if match is None:
        raise _expected("datetime")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        value = datetime(int(year), int(month), int(day), tzinfo=timezone.utc)
        hours, minutes, seconds = int(hour or 0), int(minute or 0), int(second or 0)
        micros = int((fraction or "0")[:6].ljust(6, "0"))  # DuckDB truncates to microseconds
        if hours == 24 and minutes == 0 and seconds == 0 and not (fraction and int(fraction)):
            value += timedelta(days=1)  # 24:00 is midnight at the end of the day, as DuckDB reads it
        else:
            value = value.replace(hour=hours, minute=minutes, second=seconds, microsecond=micros)
        if zone and zone != "Z":
            digits = zone[1:].replace(":", "")
            offset_hours, offset_minutes = int(digits[:2]), int(digits[2:] or 0)
            if offset_hours > 23 or offset_minutes > 59:
                raise ValueError("offset out of range")
            offset = timedelta(hours=offset_hours, minutes=offset_minutes)
            value = value - offset if zone[0] == "+" else value + offset
    except (ValueError, OverflowError):
        raise _expected("datetime") from None
    return value


def cast_datetime(value: Any) -> str | None:
    text = _trimmed(value)
    if text is None:
        return None
    return parse_datetime(text).isoformat()


CASTS: dict[str, Callable[[Any], str | None]] = {
    "string": cast_string,
    "number": cast_number,
    "boolean": cast_boolean,
    "date": cast_date,
    "datetime": cast_datetime,
}


def cast_user_id(value: Any) -> str:
    """The user id as text: a non-empty string or an integer (a JSON number without a fraction)."""
    if isinstance(value, bool) or value is None:
        raise InvalidValue(
            "empty user id: every record needs a non-empty user id"
            if value is None
            else "the user id must be a string (or an integer)"
        )
    if isinstance(value, int):  # LongInteger (a str) holds the integers too long for int()
        text = str(value)
    elif isinstance(value, str):
        text = value.strip(DUCKDB_TRIM)
        if not text:
            raise InvalidValue("empty user id: every record needs a non-empty user id")
    elif isinstance(value, dict | list):
        raise _nested()
    else:
        raise InvalidValue("the user id must be a string (or an integer)")
    if len(text) > MAX_USER_ID_CHARS:
        raise InvalidValue(
            f"user id is {len(text):,} characters long: at most {MAX_USER_ID_CHARS:,} are allowed"
        )
    return text


def _check_unicode(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidValue("not valid Unicode text (contains a lone surrogate \\ud800-\\udfff)") from None


# ---------------------------------------------------------------------------- batches


@dataclass
class ValidatedBatch:
    """The outcome of validating one request's records."""

    accepted: int = 0  # records accepted
    rejected_records: int = 0  # records rejected (each has one or more problems)
    problems: list[dict[str, Any]] = field(default_factory=list)  # {index, field, message}, capped
    rows: list[dict[str, str]] = field(default_factory=list)  # one per user, canonical strings

    def ndjson(self) -> bytes:
        """The accepted rows as newline-delimited JSON (UTF-8), the landing file's content."""
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        return ("\n".join(map(dumps, self.rows)) + "\n").encode("utf-8")


@dataclass(frozen=True)
class CompiledMapping:
    """Per-integration validation, built once: the user id key and a cast per payload property.

    The work per request is bounded: a record lists at most MAX_UNKNOWN_LISTED unknown
    properties (one more problem counts the rest), and once MAX_PROBLEMS problems are listed
    the remaining records are only checked until their first problem.
    """

    integration: str
    user_id_property: str
    casts: dict[str, Callable[[Any], str | None]]  # payload property -> its type's cast
    keep_blank: bool  # on_blank: keep -> a later record's blank value does not erase an earlier one
    unknown_message: str  # the message of an unknown property

    def validate(self, records: Sequence[Any]) -> ValidatedBatch:
        result = ValidatedBatch()
        by_user: dict[str, int] = {}
        memo: dict[tuple[str, type, Any], str | InvalidValue | None] = {}
        for index, record in enumerate(records):
            listing = len(result.problems) < MAX_PROBLEMS
            problems = self._record(index, record, result.rows, by_user, memo, listing)
            if problems:
                result.rejected_records += 1
                if listing:
                    result.problems.extend(problems[: MAX_PROBLEMS - len(result.problems)])
            else:
                result.accepted += 1
        return result

    def _cast(
        self, key: str, value: Any, memo: dict[tuple[str, type, Any], str | InvalidValue | None]
    ) -> str | None:
        """The canonical text of a property value; repeated values (plans, flags, dates) are cast once."""
        if isinstance(value, dict | list | float):  # nested values raise; -0.0 == 0.0 as keys
            text = self.casts[key](value)
            if text is not None:
                _check_unicode(text)
            return text
        memo_key = (key, type(value), value)  # the type too: True == 1 as keys
        try:
            outcome = memo[memo_key]
        except KeyError:
            try:
                outcome = self.casts[key](value)
                if outcome is not None:
                    _check_unicode(outcome)
            except InvalidValue as exc:
                outcome = exc
            memo[memo_key] = outcome
        if isinstance(outcome, InvalidValue):
            raise InvalidValue(str(outcome))
        return outcome

    def _record(
        self,
        index: int,
        record: Any,
        rows: list[dict[str, str]],
        by_user: dict[str, int],
        memo: dict[tuple[str, type, Any], str | InvalidValue | None],
        listing: bool,
    ) -> list[dict[str, Any]]:
        """The problems of one record (only the first when not `listing`); a valid record joins `rows`."""
        if not isinstance(record, dict):
            return [
                {
                    "index": index,
                    "field": None,
                    "message": "a record must be a JSON object of property: value",
                }
            ]
        uid_key = self.user_id_property
        casts = self.casts
        problems: list[dict[str, Any]] = []
        row: dict[str, str] = {}
        user_id = None
        unknown = 0
        for key, value in record.items():
            try:
                if key == uid_key:
                    user_id = cast_user_id(value)
                    _check_unicode(user_id)
                    if key not in casts:
                        continue
                if key not in casts:
                    unknown += 1
                    if unknown <= MAX_UNKNOWN_LISTED:
                        problems.append(
                            {"index": index, "field": _shown(key), "message": self.unknown_message}
                        )
                    if listing:
                        continue
                    break
                text = self._cast(key, value, memo)
                if text is not None:
                    row[key] = text
            except InvalidValue as exc:
                problems.append({"index": index, "field": _shown(key), "message": str(exc)})
                if not listing:
                    break
        if unknown > MAX_UNKNOWN_LISTED:
            problems.append(
                {
                    "index": index,
                    "field": None,
                    "message": f"and {unknown - MAX_UNKNOWN_LISTED:,} more unknown properties "
                    f"(not in the mapping of integration {self.integration!r})",
                }
            )
        if uid_key not in record and (listing or not problems):
            problems.append(
                {
                    "index": index,
                    "field": uid_key,
                    "message": f"missing user id: every record needs the property {uid_key!r}",
                }
            )
        if problems:
            return problems
        row[uid_key] = user_id  # type: ignore[assignment]
        earlier = by_user.get(user_id)  # type: ignore[arg-type]
        if earlier is None:
            by_user[user_id] = len(rows)  # type: ignore[index]
            rows.append(row)
        elif self.keep_blank:
            rows[earlier].update(row)  # the later record wins for each value it has
        else:
            rows[earlier] = row  # on_blank: clear -> the later record replaces the earlier one
        return problems


_SHOWN_FIELD_CHARS = 200


def _shown(key: str) -> str:
    """A payload property as a problem's `field`: valid UTF-8 (lone surrogates escaped), at most 200 characters."""
    if len(key) > _SHOWN_FIELD_CHARS:
        key = key[:_SHOWN_FIELD_CHARS] + "…"
    try:
        key.encode("utf-8")
        return key
    except UnicodeEncodeError:
        return key.encode("utf-8", "backslashreplace").decode("ascii")


def compile_mapping(integration: ApiIntegration) -> CompiledMapping:
    return CompiledMapping(
        integration=integration.name,
        user_id_property=integration.user_id_property,
        casts={p.property: CASTS[p.type] for p in integration.properties},
        keep_blank=integration.on_blank == "keep",
        unknown_message=(
            f"unknown property: not in the mapping of integration {integration.name!r} "
            f"(known: {', '.join([integration.user_id_property, *(p.property for p in integration.properties)])})"
        ),
    )
