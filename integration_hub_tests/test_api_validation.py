"""The API's Python validators agree with the DuckDB casts the CSV path uses."""

from __future__ import annotations

import json

import duckdb
import pytest

from integration_hub.api.document import (
    MAX_JSON_DEPTH,
    DocumentRefused,
    LongInteger,
    count_containers,
    parse_document,
)
from integration_hub.api.validation import (
    CASTS,
    MAX_PROBLEMS,
    MAX_UNKNOWN_LISTED,
    InvalidValue,
    cast_user_id,
    compile_mapping,
)
from integration_hub.core.catalog import ApiIntegration
from integration_hub.core.sql import cast_expression
from integration_hub_tests.api_support import WEB_INTEGRATION

CORPUS: dict[str, list[str]] = {
    "number": [
        "1", "1.5", " 2 ", "+3", "-4", ".5", "5.", "1e5", "1E-5", "1e+5", "1_000", "0x10", "inf", "-Infinity",
        "nan", "NaN", "1,5", "abc", "1e400", "-0", "00012", "1.7976931348623157e308", "1d", "--1", "0b1",
        "1__0", "_1", "1_", "\t1\n", "\u00a01\u3000", "1 000", "1.2.3", ".", "+", "5e", "\u0661", "\uff11",
        "1e-400", "\x1c1", "1\x00",
    ],
    "boolean": [
        "true", "TRUE", "True", " yes ", "No", "1", "0", "t", "f", "y", "n", "on", "off", "2", "1.0",
        "\u00a0false\u00a0", "\ttrue",
    ],
    "date": [
        "2024-05-01", "2024-02-29", "2023-02-29", "2024-02-30", "0001-01-01", "9999-12-31", " 2024-05-01 ",
        "2024-5-1", "20240501", "2024-13-01", "2024-00-10", "2024-01-00", "2024-05-01\t",
        "\uff12\uff10\uff12\uff14-01-01", "2024-05-01T00:00:00",
    ],
    "datetime": [
        "2024-05-01", "2024-05-01T13:45", "2024-05-01T13:45:00", "2024-05-01 13:45:00", "2024-05-01T13:45:00Z",
        "2024-05-01T13:45:00z", "2024-05-01T13:45:00.1Z", "2024-05-01T13:45:00.123456789Z",
        "2024-05-01T13:45:00.1234567+02:00", "2024-05-01T13:45:00+02", "2024-05-01T13:45:00+0230",
        "2024-05-01T13:45:00-02:30", "2024-05-01T24:00:00", "2024-05-01T24:00:01", "2024-05-01T23:59:60",
        "2024-05-01T25:00:00", "2024-02-30T10:00:00", "2024-05-01T13:45:00+14:00", "2024-05-01T13:60:00",
        "2024-05-01Z", "2024-05-01+02", "2024-05-01T13:45:00.9999995Z", "2024-12-31T23:30:00-01:00",
        " 2024-05-01T13:45:00Z ", "2024-05-01T13:45:00Z\n", "yesterday",
    ],
    "string": ["gold", " gold ", "", "   ", "\u00a0", "\t", "caf\u00e9 \U0001f600", "a\x00b"],
}  # fmt: skip


@pytest.fixture(scope="module")
def duck() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


def _duckdb_cast(con: duckdb.DuckDBPyConnection, value: str, ptype: str):
    return con.execute(f"SELECT {cast_expression('CAST($v AS VARCHAR)', ptype)}", {"v": value}).fetchone()[0]


@pytest.mark.parametrize("ptype", list(CORPUS))
def test_python_and_duckdb_accept_the_same_text(duck: duckdb.DuckDBPyConnection, ptype: str) -> None:
    """For every sample: both accept or both refuse; the canonical text casts to the same value."""
    for value in CORPUS[ptype]:
        expected = _duckdb_cast(duck, value, ptype)
        try:
            canonical = CASTS[ptype](value)
        except InvalidValue:
            assert expected is None, f"{ptype} {value!r}: DuckDB reads {expected!r}, Python refuses it"
            continue
        if canonical is None:  # blank: no value, as in an empty CSV cell
            assert expected is None, f"{ptype} {value!r}"
            continue
        assert expected is not None, f"{ptype} {value!r}: Python accepts it, DuckDB does not"
        assert _duckdb_cast(duck, canonical, ptype) == expected, f"{ptype} {value!r} -> {canonical!r}"


@pytest.mark.parametrize(
    ("ptype", "value", "canonical"),
    [
        ("number", 42, "42"),
        ("number", -3.5, "-3.5"),
        ("number", "1e3", "1000.0"),
        ("number", 10**30, str(10**30)),
        ("boolean", True, "true"),
        ("boolean", False, "false"),
        ("boolean", 1, "true"),
        ("boolean", 0, "false"),
        ("boolean", "Yes", "true"),
        ("string", 7, "7"),
        ("string", True, "true"),
        ("string", None, None),
        ("date", "2024-05-01", "2024-05-01"),
        ("datetime", "2024-05-01T13:45:00+02:00", "2024-05-01T11:45:00+00:00"),
        ("datetime", "2024-05-01 13:45", "2024-05-01T13:45:00+00:00"),
        ("datetime", "2024-05-01T24:00", "2024-05-02T00:00:00+00:00"),
        ("number", None, None),
        ("number", "  ", None),
    ],
)
def test_json_values_become_canonical_strings(ptype: str, value: object, canonical: str | None) -> None:
    assert CASTS[ptype](value) == canonical


@pytest.mark.parametrize(
    ("ptype", "value"),
    [
        ("number", True),
        ("number", float("inf")),
        ("number", 10**400),
        ("boolean", 2),
        ("boolean", 1.0),
        ("date", 20240501),
        ("datetime", 1714567890),
        ("string", {"a": 1}),
        ("number", [1, 2]),
    ],
)
def test_json_values_of_the_wrong_kind_are_refused(ptype: str, value: object) -> None:
    with pytest.raises(InvalidValue):
        CASTS[ptype](value)


def test_user_ids() -> None:
    assert cast_user_id("  u1\u00a0") == "u1"
    assert cast_user_id(12345) == "12345"
    assert cast_user_id(-7) == "-7"
    assert cast_user_id(10**1023) == "1" + "0" * 1023  # 1,024 digits: the longest allowed
    assert (
        cast_user_id("\u00fc\u00f1\u00ee\u00e7\u00f8d\u00e9 \U0001f600")
        == "\u00fc\u00f1\u00ee\u00e7\u00f8d\u00e9 \U0001f600"
    )
    for bad in ("", "   ", None, True, 1.5, {"a": 1}, ["u"], "x" * 1025):
        with pytest.raises(InvalidValue):
            cast_user_id(bad)


@pytest.mark.parametrize("digits", [1025, 2000, 4000, 4301, 100_000])
def test_the_user_id_length_limit_holds_for_integers_of_any_size(digits: int) -> None:
    """JSON integers too: as int, or as LongInteger text past int()'s limit (which never refuses the body)."""
    document = parse_document(b'{"data": [{"userId": 1%s}]}' % (b"0" * (digits - 1)), 100)
    value = document["data"][0]["userId"]
    assert isinstance(value, LongInteger if digits > 4300 else int) and len(str(value)) == digits
    with pytest.raises(InvalidValue, match=f"user id is {digits:,} characters long: at most 1,024"):
        cast_user_id(value)
    with pytest.raises(InvalidValue, match="too large for a double"):
        CASTS["number"](value)
    assert CASTS["string"](value) == str(value)  # a string property keeps the digits, as it would for 42


def _mapping(**changes: object):
    return compile_mapping(ApiIntegration.model_validate({**WEB_INTEGRATION, **changes}))


def test_a_batch_reports_every_problem_with_index_and_field() -> None:
    records = [
        {"userId": "u1", "planTier": "gold", "visits": "12", "isActive": "YES", "signup": "2024-05-01"},
        {"userId": "", "planTier": "x"},
        {"planTier": "no id"},
        {"userId": "u4", "visits": "many", "color": "red"},
        "not an object",
        {"userId": "u6", "lastSeen": {"nested": True}},
        {"userId": "u7", "planTier": "caf\u00e9 \ud800"},
    ]
    batch = _mapping().validate(records)
    assert batch.accepted == 1
    assert batch.rejected_records == 6
    problems = {(p["index"], p["field"]) for p in batch.problems}
    assert problems == {
        (1, "userId"),
        (2, "userId"),
        (3, "visits"),
        (3, "color"),
        (4, None),
        (5, "lastSeen"),
        (6, "planTier"),
    }
    unknown = next(p for p in batch.problems if p["field"] == "color")
    assert "unknown property" in unknown["message"]
    assert "surrogate" in next(p for p in batch.problems if p["index"] == 6)["message"]
    lines = batch.ndjson().decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"userId": "u1", "planTier": "gold", "visits": "12.0", "isActive": "true", "signup": "2024-05-01"}
    ]


def test_records_of_one_user_are_merged_later_wins() -> None:
    records = [
        {"userId": "u1", "planTier": "gold", "visits": 1},
        {"userId": "u2", "planTier": "silver"},
        {"userId": " u1 ", "planTier": "platinum", "visits": None},
    ]
    keep = _mapping().validate(records)
    assert keep.accepted == 3
    assert keep.rows == [
        {"userId": "u1", "planTier": "platinum", "visits": "1"},
        {"userId": "u2", "planTier": "silver"},
    ]
    clear = _mapping(on_blank="clear").validate(records)
    assert clear.rows[0] == {"userId": "u1", "planTier": "platinum"}


def test_nested_values_are_rejected_per_record() -> None:
    batch = _mapping().validate([{"userId": "u1", "planTier": [[1]]}, {"userId": "u2", "visits": {"n": 1}}])
    assert batch.accepted == 0
    assert [(p["field"], p["message"][:6]) for p in batch.problems] == [
        ("planTier", "nested"),
        ("visits", "nested"),
    ]


def test_problem_list_is_capped_but_counts_are_exact() -> None:
    batch = _mapping().validate([{"userId": ""} for _ in range(1500)] + [{"userId": "ok"}])
    assert batch.rejected_records == 1500
    assert len(batch.problems) == MAX_PROBLEMS
    assert batch.accepted == 1


def test_unknown_properties_are_listed_up_to_a_bound_then_counted() -> None:
    record = {"userId": "u1", **{f"extra{i}": i for i in range(5000)}}
    batch = _mapping().validate([record, {"userId": "u2", "colour": "red"}])
    assert batch.rejected_records == 2
    first = [p for p in batch.problems if p["index"] == 0]
    assert [p["field"] for p in first] == [f"extra{i}" for i in range(MAX_UNKNOWN_LISTED)] + [None]
    assert (
        first[-1]["message"] == "and 4,990 more unknown properties (not in the mapping of integration 'web')"
    )
    assert [p["field"] for p in batch.problems if p["index"] == 1] == ["colour"]


def test_once_the_problem_list_is_full_records_stop_at_their_first_problem() -> None:
    records = [{"userId": "", "colour": "red", **{f"x{i}": 1 for i in range(200)}} for _ in range(1200)]
    batch = _mapping().validate([*records, {"userId": "ok"}])
    assert batch.rejected_records == 1200 and batch.accepted == 1
    assert len(batch.problems) == MAX_PROBLEMS


def test_a_long_unknown_key_is_shortened_in_the_answer() -> None:
    batch = _mapping().validate([{"userId": "u1", "k" * 5000: 1}])
    assert batch.problems[0]["field"] == "k" * 200 + "\u2026"


# ---------------------------------------------------------------------------- the document


def _refused(body: bytes, max_containers: int = 1000) -> DocumentRefused:
    with pytest.raises(DocumentRefused) as caught:
        parse_document(body, max_containers)
    return caught.value


def _nest(depth: int, inner: object = "x") -> object:
    """`depth` objects, one in the other, around `inner`."""
    for _ in range(depth):
        inner = {"a": inner}
    return inner


@pytest.mark.parametrize("place", ["known", "unknown", "top", "user id", "array"])
def test_nesting_deeper_than_the_bound_is_refused_wherever_it_is(place: str) -> None:
    deep = _nest(40)
    document = {
        "known": {"integration_token": "t", "data": [{"userId": "u", "planTier": deep}]},
        "unknown": {"integration_token": "t", "data": [{"userId": "u", "colour": deep}]},
        "top": {"integration_token": "t", "data": [{"userId": "u"}], "extra": deep},
        "user id": {"integration_token": "t", "data": [{"userId": deep}]},
        "array": {"integration_token": "t", "data": [{"userId": "u"}, json.loads("[" * 40 + "]" * 40)]},
    }[place]
    refused = _refused(json.dumps(document).encode())
    assert refused.code == "invalid_json"
    assert f"nests deeper than {MAX_JSON_DEPTH} levels" in refused.message


def test_nesting_of_exactly_the_bound_parses() -> None:
    # {"data": [{"p": <29 objects>}]}: the innermost object is at depth 32
    document = parse_document(json.dumps({"data": [{"p": _nest(28, {})}]}).encode(), 1000)
    assert document["data"][0]["p"]["a"]
    assert "nests deeper" in _refused(json.dumps({"data": [{"p": _nest(29, {})}]}).encode()).message
    assert "nests deeper" in _refused(b"[" * 200_000 + b"]" * 200_000, 10**6).message


@pytest.mark.parametrize(
    ("body", "key", "where"),
    [
        (
            b'{"integration_token": "a", "integration_token": "b", "data": []}',
            "integration_token",
            "the top level",
        ),
        (
            b'{"integration_token": "a", "data": [{"u": 1}, {"userId": "x", "userId": "y"}]}',
            "userId",
            "data[1]",
        ),
        (b'{"data": [{"p": {"q": 1, "q": 2}}]}', "q", "data[0].p"),
        (b'{"data": [{"a b": {"q": 1, "q": 2}}]}', "q", 'data[0]["a b"]'),
    ],
)
def test_a_key_twice_in_one_object_is_refused_naming_it(body: bytes, key: str, where: str) -> None:
    refused = _refused(body)
    assert refused.code == "duplicate_key"
    assert (
        refused.message == f'the key "{key}" appears more than once in {where}: send each key once per object'
    )


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [("utf-16", "NUL bytes"), ("utf-16-le", "NUL bytes"), ("utf-32", "NUL bytes"), ("utf-32-be", "NUL bytes"),
     ("latin-1", "not UTF-8 (byte 0xe9 at offset")],
)  # fmt: skip
def test_a_body_not_in_utf8_is_refused(encoding: str, expected: str) -> None:
    refused = _refused('{"data": [{"userId": "caf\u00e9"}]}'.encode(encoding))
    assert refused.code == "invalid_json" and expected in refused.message


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    assert parse_document(b'\xef\xbb\xbf{"data": []}', 10) == {"data": []}


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [' + b",".join([b"{}"] * 5000) + b"]}",
        b'{"data": [' + b",".join([b"[]"] * 5000) + b"]}",
        b'{"data": [{"userId": "u", "p": ['
        + b",".join([b"[1]"] * 500)
        + b"]}"
        + b', {"q": [[]]}' * 300
        + b"]}",
    ],
    ids=["objects", "arrays", "mixed"],
)
def test_objects_and_arrays_are_bounded(body: bytes) -> None:
    refused = _refused(body, 1000)
    assert refused.code == "invalid_request"
    assert refused.message.startswith("the body holds more than 1,000 JSON objects and arrays")


@pytest.mark.parametrize(
    "value",
    [
        {"data": [{"a": "[{"}, [], {"b": ["\\", '\\"[', '"{"', "\\\\"]}]},
        ["", '""', '"', "[", "]", "{", "\\", 'x\\"{\\"y', [[[]]], {"k[": {"{": []}}],
        {"\u00e9[": ["\U0001f600{", {'"': "\\"}]},
        "just a string with [ and {",
    ],
)
def test_containers_are_counted_outside_strings(value: object) -> None:
    expected = json.dumps(value).count("{") + json.dumps(value).count("[")  # brackets as structure
    expected -= sum(s.count("{") + s.count("[") for s in _strings(value))
    for ensure_ascii in (True, False):
        assert count_containers(json.dumps(value, ensure_ascii=ensure_ascii).encode()) == expected


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [json.dumps(value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_counting_containers_is_linear_whatever_the_strings() -> None:
    import time

    bodies = [
        b"[" * 9000 + b'"' + b'\\"' * 1_500_000,  # a string that never closes: quadratic for a regex
        b"[" + b'"[",' * 1_250_000 + b"1]",
        b"[" + b"[]," * 1_600_000 + b"[]]",
    ]
    started = time.monotonic()
    assert [count_containers(body) for body in bodies] == [9000, 1, 1_600_002]
    assert time.monotonic() - started < 2


def test_brackets_inside_strings_are_text_not_structure() -> None:
    text = b'{"data": [{"userId": "u", "note": "%s"}]}' % (b"[{" * 5000)
    assert parse_document(text, 1000)["data"][0]["note"] == "[{" * 5000


def test_nan_and_infinity_are_not_json() -> None:
    refused = _refused(b'{"data": [{"visits": NaN}]}')
    assert refused.code == "invalid_json" and "NaN is not valid JSON" in refused.message
