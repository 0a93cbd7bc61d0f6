"""A request body as a JSON document, with limits that hold before any record is looked at.

Every check here refuses the body as a whole (400) and costs time linear in its size,
whatever it holds, so that one request cannot take the server's CPU:

- UTF-8 only (a UTF-8 byte order mark is ignored). `json.loads` would guess UTF-16 and
  UTF-32 from the bytes; decoding strictly first makes every other encoding a 400.
- at most `max_containers` objects and arrays (a 5 MB body of `{}` or `[]` would otherwise
  cost seconds and hundreds of MB to parse and walk), counted on the bytes before parsing;
- no key twice in one object, at any level;
- nested at most MAX_JSON_DEPTH levels deep, anywhere (known or unknown properties);
- `NaN` and `Infinity` are not JSON;
- an integer too long for `int()` (4,300 digits by default) does not refuse the body: it
  stays text (`LongInteger`), and the records say what is wrong with it. No such number
  fits a user id or a DOUBLE anyway.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

MAX_JSON_DEPTH = 32  # {"data": [{"prop": ...}]} is 3 levels deep
LONG_INTEGER_CHARS = 600  # below 640, the least $PYTHONINTMAXSTRDIGITS may be
_BOM = b"\xef\xbb\xbf"
_NOT_QUOTES_OR_OPENERS = bytes(b for b in range(256) if b not in b'"[{')
_SHOWN_KEY_CHARS = 100


class DocumentRefused(ValueError):
    """The body is refused as a whole: `code` is the answer's `error`, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LongInteger(str):
    """A JSON integer of more than LONG_INTEGER_CHARS characters, kept as its text."""


def shown_key(key: str) -> str:
    """A key as an error message quotes it: at most 100 characters."""
    text = key if len(key) <= _SHOWN_KEY_CHARS else key[:_SHOWN_KEY_CHARS] + "…"
    return json.dumps(text, ensure_ascii=False)


def _path(parts: list[str | int]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if p.isidentifier() else f"[{shown_key(p)}]"
                   for p in parts)  # fmt: skip
    return text.lstrip(".") or "the top level"


def _decode(body: bytes) -> str:
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    if b"\x00" in body:  # never in JSON text; every other byte of ASCII text in UTF-16, 3 in 4 in UTF-32
        raise DocumentRefused(
            "invalid_json", "the body contains NUL bytes: it looks like UTF-16 or UTF-32; send UTF-8"
        )
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentRefused(
            "invalid_json",
            f"the body is not UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start:,}): send UTF-8",
        ) from None


def count_containers(body: bytes) -> int:
    """The `{` and `[` of a JSON text outside its strings, in time linear in its size (C speed).

    Escaped backslashes and quotes are dropped first, so every remaining quote opens or
    closes a string; of the quotes and brackets that are left, the brackets between an even
    number of quotes are outside strings. (A regular expression for JSON strings would
    backtrack quadratically on a body of unclosed ones.)
    """
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = unescaped.translate(None, _NOT_QUOTES_OR_OPENERS).replace(b'""', b"")  # "" encloses nothing
    return len(b"".join(marks.split(b'"')[0::2]))


class _TooManyContainers(Exception):
    pass


class _NotFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotFinite(f"{name} is not valid JSON (numbers must be finite)")


def _integer(text: str) -> int | LongInteger:
    return int(text) if len(text) <= LONG_INTEGER_CHARS else LongInteger(text)


def _int_is_bounded() -> bool:
    """Whether int() refuses long digit strings (else its O(n²) cost is ours to bound)."""
    limit = getattr(sys, "get_int_max_str_digits", lambda: 0)()
    return 0 < limit <= 4300


def parse_document(body: bytes, max_containers: int) -> Any:
    """The JSON document of a request body, or DocumentRefused saying what is wrong."""
    text = _decode(body)
    too_many = DocumentRefused(
        "invalid_request",
        f"the body holds more than {max_containers:,} JSON objects and arrays: send fewer records per "
        "request; record values cannot be objects or arrays",
    )
    raw = body.count(b"{") + body.count(b"[")  # brackets inside strings too: an upper bound
    if raw > max_containers and count_containers(body) > max_containers:
        raise too_many
    try:
        try:
            document, duplicated = _parse(text, max_containers, None if _int_is_bounded() else _integer)
        except (json.JSONDecodeError, _NotFinite):
            raise
        except ValueError:  # an integer past int()'s limit: keep such integers as text
            document, duplicated = _parse(text, max_containers, _integer)
    except _TooManyContainers:
        raise too_many from None
    except RecursionError:
        raise DocumentRefused(
            "invalid_json", f"the JSON document nests deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError as exc:
        raise DocumentRefused("invalid_json", f"the body is not valid JSON: {exc}") from None
    if _check_structure(document, duplicated, max_containers) > max_containers:
        raise too_many
    return document


# id(object) -> (the object, kept alive so that its id is not reused; its first repeated key)
_Duplicated = dict[int, tuple[dict[str, Any], str]]


def _parse(text: str, max_containers: int, parse_int: Callable[[str], Any] | None) -> tuple[Any, _Duplicated]:
    duplicated: _Duplicated = {}
    objects = 0

    def pairs_to_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal objects
        objects += 1
        if objects > max_containers:
            raise _TooManyContainers
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            duplicated[id(obj)] = (obj, key)
        return obj

    document = json.loads(
        text, object_pairs_hook=pairs_to_object, parse_constant=_reject_constant, parse_int=parse_int
    )
    return document, duplicated


def _check_structure(document: Any, duplicated: _Duplicated, max_containers: int) -> int:
    """Depth and duplicate keys, in document order, without recursion; returns the containers seen.

    Stops once past `max_containers`, before building anything for the items of a large array.
    """
    if not isinstance(document, dict | list):
        return 0
    seen = 1
    stack: list[tuple[Any, list[str | int]]] = [(document, [])]
    while stack:
        value, parts = stack.pop()
        if len(parts) >= MAX_JSON_DEPTH:
            raise DocumentRefused(
                "invalid_json",
                f"the JSON document nests deeper than {MAX_JSON_DEPTH} levels (at {_path(parts)}): "
                "record values are strings, numbers, booleans or null",
            )
        if isinstance(value, dict):
            if id(value) in duplicated:
                raise DocumentRefused(
                    "duplicate_key",
                    f"the key {shown_key(duplicated[id(value)][1])} appears more than once in {_path(parts)}: "
                    "send each key once per object",
                )
            keys: Any = value.keys()
            values = list(value.values())
        else:
            keys = range(len(value))
            values = value
        types = list(map(type, values))  # at C speed: most values are neither objects nor arrays
        nested = types.count(dict) + types.count(list)
        if not nested:
            continue
        seen += nested
        if seen > max_containers:
            return seen
        children = [
            (v, [*parts, k]) for k, v, t in zip(keys, values, types, strict=True) if t is dict or t is list
        ]
        stack.extend(reversed(children))
    return seen
