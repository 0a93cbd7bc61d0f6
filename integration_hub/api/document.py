"""A request body as a JSON document, with limits that hold before any record is looked at.

Every check here refuses the body as a whole (400) and costs little, whatever the body
holds, so that one request cannot take the server's CPU:

- UTF-8 only (a UTF-8 byte order mark is ignored). `json.loads` would guess UTF-16 and
  UTF-32 from the bytes; decoding strictly first makes every other encoding a 400.
- at most `max_containers` objects and arrays, counted on the raw bytes before parsing
  (a 5 MB body of `{}` would otherwise cost seconds to parse and walk);
- no key twice in one object, at any level;
- nested at most MAX_JSON_DEPTH levels deep, anywhere (known or unknown properties);
- `NaN` and `Infinity` are not JSON;
- integers longer than LONG_INTEGER_CHARS stay text (`LongInteger`): Python's `int()` of
  n digits costs O(n²) and stops at 4,300 digits by default, and no such number fits a
  user id or a DOUBLE anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

MAX_JSON_DEPTH = 32  # {"data": [{"prop": ...}]} is 3 levels deep
LONG_INTEGER_CHARS = 600  # below 640, the least $PYTHONINTMAXSTRDIGITS may be
_BOM = b"\xef\xbb\xbf"
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_LONG_DIGITS = re.compile(rb"[0-9]{%d,}" % LONG_INTEGER_CHARS)
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


def _count_containers(body: bytes, limit: int) -> int:
    """Objects and arrays in the body (brackets inside strings do not count, once that matters)."""
    count = body.count(b"{") + body.count(b"[")
    if count > limit:  # some may be inside strings: count again without them
        outside = _STRING.sub(b"", body)
        count = outside.count(b"{") + outside.count(b"[")
    return count


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _integer(text: str) -> int | LongInteger:
    return int(text) if len(text) <= LONG_INTEGER_CHARS else LongInteger(text)


def parse_document(body: bytes, max_containers: int) -> Any:
    """The JSON document of a request body, or DocumentRefused saying what is wrong."""
    text = _decode(body)
    containers = _count_containers(body, max_containers)
    if containers > max_containers:
        raise DocumentRefused(
            "invalid_request",
            f"the body holds {containers:,} JSON objects and arrays, more than the {max_containers:,} allowed "
            "in one request: send fewer records per request; record values cannot be objects or arrays",
        )
    # id(object) -> (the object, kept alive so that its id is not reused; its first repeated key)
    duplicated: dict[int, tuple[dict[str, Any], str]] = {}

    def pairs_to_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            duplicated[id(obj)] = (obj, key)
        return obj

    try:
        document = json.loads(
            text,
            object_pairs_hook=pairs_to_object,
            parse_constant=_reject_constant,
            parse_int=_integer if _LONG_DIGITS.search(body) else None,
        )
    except RecursionError:
        raise DocumentRefused(
            "invalid_json", f"the JSON document nests deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError as exc:
        raise DocumentRefused("invalid_json", f"the body is not valid JSON: {exc}") from None
    _check_structure(document, duplicated)
    return document


def _check_structure(document: Any, duplicated: dict[int, tuple[dict[str, Any], str]]) -> None:
    """Depth and duplicate keys, in document order, without recursion (the containers are few)."""
    stack: list[tuple[Any, list[str | int]]] = [(document, [])] if isinstance(document, dict | list) else []
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
                key = duplicated[id(value)][1]
                raise DocumentRefused(
                    "duplicate_key",
                    f"the key {shown_key(key)} appears more than once in {_path(parts)}: "
                    "send each key once per object",
                )
            if _holds_containers(value.values()):
                stack.extend(reversed([(v, [*parts, k]) for k, v in value.items() if isinstance(v, dict | list)]))
        elif _holds_containers(value):
            stack.extend(reversed([(v, [*parts, i]) for i, v in enumerate(value) if isinstance(v, dict | list)]))


def _holds_containers(values: Iterable[Any]) -> bool:
    """Whether any value is an object or array; at C speed, as most values are neither."""
    types = set(map(type, values))
    return dict in types or list in types
