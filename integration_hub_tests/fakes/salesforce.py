"""A fake Salesforce org served over real HTTPS, for tests.

simple-salesforce (and plain ``requests``) talk to it unmodified: OAuth 2.0 endpoints, REST
describe/query/sObject Collections, single-record sObject calls, and Bulk API 2.0 ingest and
query jobs. Org state lives in memory and is configured from tests; fault injection and a call
log let tests assert on how the code under test behaved.

Typical use::

    with FakeSalesforce(with_standard_objects=True) as fake:
        ids = fake.insert("Contact", [{"LastName": "Ng", "Email": "ng@example.com"}])
        sf = fake.client()  # simple_salesforce.Salesforce bound to the fake
        sf.query_all("SELECT Id, Email FROM Contact")

The modelled behaviour follows real Salesforce where simple-salesforce depends on it; the
module docstrings of each section say what is (and is not) modelled.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import hmac
import io
import ipaddress
import json
import os
import re
import secrets
import shutil
import ssl
import string
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from requests.adapters import HTTPAdapter

__all__ = [
    "FakeSalesforce",
    "boolean_field",
    "date_field",
    "datetime_field",
    "email_field",
    "external_id_field",
    "int_field",
    "normalize_id",
    "number_field",
    "picklist_field",
    "reference_field",
    "sf_field",
    "text_field",
    "textarea_field",
    "to_18",
]

# ---------------------------------------------------------------------------------------------
# Record Ids
# ---------------------------------------------------------------------------------------------

_B62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_SUFFIX_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")

STANDARD_KEY_PREFIXES = {
    "account": "001",
    "contact": "003",
    "user": "005",
    "opportunity": "006",
    "lead": "00Q",
    "task": "00T",
    "event": "00U",
    "case": "500",
    "campaign": "701",
}


_UPPER_MASK = str.maketrans({c: "1" if c in string.ascii_uppercase else "0" for c in _B62})


def _id_suffix(id15: str) -> str:
    """The 3-character case-safety checksum Salesforce appends to 15-char Ids."""
    # Each 5-char chunk becomes a 5-bit mask of its uppercase letters (first char = lowest bit).
    return "".join(_SUFFIX_CHARS[int(id15[i : i + 5].translate(_UPPER_MASK)[::-1], 2)] for i in (0, 5, 10))


def to_18(id15: str) -> str:
    """Convert a 15-character Id to its 18-character form."""
    return id15[:15] + _id_suffix(id15[:15])


def normalize_id(value: Any) -> str | None:
    """Return the canonical 18-char Id, or None if ``value`` is not a well-formed Id.

    18-char Ids are case-insensitive (the suffix encodes the case), so their case is restored
    from the suffix as Salesforce does.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        return None
    if len(value) == 15:
        return value + _id_suffix(value)
    if value[15:] == _id_suffix(value[:15]):
        return value  # already canonical (the common case)
    suffix = value[15:].upper()
    if any(c not in _SUFFIX_CHARS for c in suffix):
        return None
    chars = list(value[:15])
    for chunk, sc in enumerate(suffix):
        bits = _SUFFIX_CHARS.index(sc)
        for pos in range(5):
            k = chunk * 5 + pos
            upper = bool(bits >> pos & 1)
            if chars[k].isalpha():
                chars[k] = chars[k].upper() if upper else chars[k].lower()
            elif upper:
                return None
    id15 = "".join(chars)
    return id15 + _id_suffix(id15)


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return "".join(reversed(out))


def _random_id(prefix: str) -> str:
    return to_18(prefix + "".join(secrets.choice(_B62) for _ in range(15 - len(prefix))))


# ---------------------------------------------------------------------------------------------
# Field descriptions (shaped like describe() output) and helpers to build them
# ---------------------------------------------------------------------------------------------

FIELD_TYPES = {
    "string",
    "email",
    "double",
    "percent",
    "currency",
    "int",
    "boolean",
    "date",
    "datetime",
    "picklist",
    "multipicklist",
    "id",
    "reference",
    "textarea",
    "phone",
    "url",
}
_TEXT_TYPES = {"string", "email", "picklist", "multipicklist", "textarea", "phone", "url"}
_NUMBER_TYPES = {"double", "percent", "currency"}
_SOAP_TYPES = {
    "double": "xsd:double",
    "percent": "xsd:double",
    "currency": "xsd:double",
    "int": "xsd:int",
    "boolean": "xsd:boolean",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
    "id": "tns:ID",
    "reference": "tns:ID",
}
_DEFAULT_LENGTH = {
    "string": 255,
    "email": 80,
    "phone": 40,
    "url": 255,
    "textarea": 32000,
    "picklist": 255,
    "multipicklist": 4099,
    "id": 18,
    "reference": 18,
}


def _label_for(name: str) -> str:
    base = name[:-3] if name.endswith("__c") else name
    base = base.replace("_", " ")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", base).strip()


def sf_field(name: str, type: str = "string", **overrides: Any) -> dict[str, Any]:
    """Build a describe()-shaped field dict with Salesforce-like defaults.

    ``picklistValues`` may be given as plain strings. Any describe key can be overridden.
    """
    if type not in FIELD_TYPES:
        raise ValueError(f"unsupported field type {type!r}; expected one of {sorted(FIELD_TYPES)}")
    length = _DEFAULT_LENGTH.get(type, 0)
    precision = 18 if type in _NUMBER_TYPES else 0
    scale = 2 if type in ("currency", "percent") else 0
    desc: dict[str, Any] = {
        "name": name,
        "label": _label_for(name),
        "type": type,
        "soapType": _SOAP_TYPES.get(type, "xsd:string"),
        "length": length,
        "byteLength": length * 3,
        "precision": precision,
        "scale": scale,
        "digits": 9 if type == "int" else 0,
        "createable": True,
        "updateable": True,
        "nillable": type != "boolean",
        "filterable": True,
        "sortable": True,
        "groupable": type not in _NUMBER_TYPES,
        "aggregatable": True,
        "unique": False,
        "externalId": False,
        "idLookup": type == "id",
        "caseSensitive": False,
        "custom": name.endswith("__c"),
        "calculated": False,
        "autoNumber": False,
        "defaultedOnCreate": type == "boolean",
        "defaultValue": False if type == "boolean" else None,
        "nameField": False,
        "htmlFormatted": False,
        "dependentPicklist": False,
        "permissionable": name.endswith("__c"),
        "polymorphicForeignKey": False,
        "picklistValues": [],
        "restrictedPicklist": False,
        "referenceTo": [],
        "relationshipName": None,
        "inlineHelpText": None,
    }
    desc.update(overrides)
    if "length" in overrides and "byteLength" not in overrides:
        desc["byteLength"] = desc["length"] * 3
    # Long text areas are neither filterable nor sortable in real orgs.
    if type == "textarea" and desc["length"] > 255:
        for key in ("filterable", "sortable", "groupable"):
            if key not in overrides:
                desc[key] = False
    desc["picklistValues"] = [
        v
        if isinstance(v, dict)
        else {"active": True, "defaultValue": False, "label": str(v), "validFor": None, "value": str(v)}
        for v in desc["picklistValues"]
    ]
    return desc


def text_field(name: str, length: int = 255, **kw: Any) -> dict[str, Any]:
    """A string field."""
    return sf_field(name, "string", length=length, **kw)


def textarea_field(name: str, length: int = 32000, **kw: Any) -> dict[str, Any]:
    """A (long) text area field; >255 chars is not filterable, like Salesforce."""
    return sf_field(name, "textarea", length=length, **kw)


def email_field(name: str = "Email", **kw: Any) -> dict[str, Any]:
    """An email field (length 80, validated)."""
    return sf_field(name, "email", **kw)


def number_field(
    name: str, type: str = "double", precision: int = 18, scale: int = 2, **kw: Any
) -> dict[str, Any]:
    """A double/currency/percent field."""
    return sf_field(name, type, precision=precision, scale=scale, **kw)


def int_field(name: str, **kw: Any) -> dict[str, Any]:
    """An integer field."""
    return sf_field(name, "int", **kw)


def boolean_field(name: str, default: bool = False, **kw: Any) -> dict[str, Any]:
    """A checkbox; never null, defaults to ``default`` on create."""
    return sf_field(name, "boolean", defaultValue=default, **kw)


def date_field(name: str, **kw: Any) -> dict[str, Any]:
    """A date field (YYYY-MM-DD)."""
    return sf_field(name, "date", **kw)


def datetime_field(name: str, **kw: Any) -> dict[str, Any]:
    """A datetime field (ISO 8601, stored in UTC)."""
    return sf_field(name, "datetime", **kw)


def picklist_field(name: str, values: Iterable[str], restricted: bool = False, **kw: Any) -> dict[str, Any]:
    """A picklist; ``restricted`` rejects values outside ``values``."""
    return sf_field(name, "picklist", picklistValues=list(values), restrictedPicklist=restricted, **kw)


def reference_field(
    name: str, reference_to: str, relationship_name: str | None = None, **kw: Any
) -> dict[str, Any]:
    """A lookup to ``reference_to`` (the target must exist if that object is in the fake)."""
    rel = relationship_name or (name[:-2] if name.endswith("Id") else name.replace("__c", "__r"))
    return sf_field(name, "reference", referenceTo=[reference_to], relationshipName=rel, **kw)


def external_id_field(name: str, length: int = 255, **kw: Any) -> dict[str, Any]:
    """A unique external-Id text field (usable for upsert)."""
    return sf_field(name, "string", length=length, externalId=True, unique=True, idLookup=True, **kw)


def _system_fields() -> list[dict[str, Any]]:
    ro = {"createable": False, "updateable": False}
    return [
        sf_field("Id", "id", label="Record ID", nillable=False, defaultedOnCreate=True, **ro),
        sf_field("IsDeleted", "boolean", label="Deleted", **ro),
        sf_field(
            "CreatedDate", "datetime", label="Created Date", nillable=False, defaultedOnCreate=True, **ro
        ),
        sf_field(
            "LastModifiedDate",
            "datetime",
            label="Last Modified Date",
            nillable=False,
            defaultedOnCreate=True,
            **ro,
        ),
        sf_field(
            "SystemModstamp",
            "datetime",
            label="System Modstamp",
            nillable=False,
            defaultedOnCreate=True,
            **ro,
        ),
    ]


def _standard_objects() -> dict[str, list[dict[str, Any]]]:
    lead_sources = ["Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other"]
    ro = {"createable": False, "updateable": False}
    return {
        "Account": [
            text_field("Name", nillable=False, nameField=True),
            text_field("AccountNumber", 40),
            picklist_field("Industry", ["Agriculture", "Banking", "Education", "Retail", "Technology"]),
            number_field("AnnualRevenue", "currency", scale=0),
            int_field("NumberOfEmployees"),
            sf_field("Phone", "phone"),
            sf_field("Website", "url"),
            textarea_field("Description"),
        ],
        "Contact": [
            text_field("FirstName", 40),
            text_field("LastName", 80, nillable=False),
            text_field("Name", 121, nameField=True, **ro),
            email_field("Email", idLookup=True),
            sf_field("Phone", "phone"),
            text_field("Title", 128),
            reference_field("AccountId", "Account"),
            picklist_field("LeadSource", lead_sources),
            date_field("Birthdate"),
            boolean_field("HasOptedOutOfEmail"),
            textarea_field("Description"),
        ],
        "Lead": [
            text_field("FirstName", 40),
            text_field("LastName", 80, nillable=False),
            text_field("Name", 121, nameField=True, **ro),
            text_field("Company", 255, nillable=False),
            email_field("Email", idLookup=True),
            picklist_field(
                "Status",
                [
                    "Open - Not Contacted",
                    "Working - Contacted",
                    "Closed - Converted",
                    "Closed - Not Converted",
                ],
                restricted=True,
                nillable=False,
                defaultedOnCreate=True,
                defaultValue="Open - Not Contacted",
            ),
            picklist_field("LeadSource", lead_sources),
            picklist_field("Rating", ["Hot", "Warm", "Cold"], restricted=True),
        ],
    }


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class _ApiError(Exception):
    """Aborts a request with a Salesforce-shaped error response."""

    def __init__(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status}: {payload}")
        self.status = status
        self.payload = payload
        self.headers = dict(headers or {})

    @classmethod
    def of(cls, status: int, code: str, message: str, fields: list[str] | None = None) -> _ApiError:
        err: dict[str, Any] = {"message": message, "errorCode": code}
        if fields is not None:
            err["fields"] = fields
        return cls(status, [err])


class _FieldError(Exception):
    """A per-record save error (SaveResult.errors entry)."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fields = fields or []

    def as_json(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}

    def as_bulk(self) -> str:
        # Bulk 2.0 failedResults format: "CODE:message:Field1,Field2 --" (fields may be empty).
        return (
            f"{self.code}:{self.message}:{','.join(self.fields)} --"
            if self.fields
            else f"{self.code}:{self.message}:--"
        )


class _TypeMismatch(Exception):
    pass


def _soql_error(code: str, query: str, pos: int, message: str) -> _ApiError:
    """SOQL errors carry the query, a caret and row/column like the real API."""
    before = query[:pos]
    row = before.count("\n") + 1
    col = pos - (before.rfind("\n") + 1) + 1
    line = query.splitlines()[row - 1] if query.splitlines() else query
    return _ApiError.of(
        400, code, f"\n{line}\n{' ' * (col - 1)}^\nERROR at Row:{row}:Column:{col}\n{message}"
    )


# ---------------------------------------------------------------------------------------------
# Value coercion and validation (shared by REST and Bulk 2.0)
# ---------------------------------------------------------------------------------------------

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_NUM_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?$")


def _now_iso() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000"


def _normalize_datetime(text: str) -> str:
    if not _DATETIME_RE.match(text):
        raise _TypeMismatch(text)
    t = text
    if re.search(r"[+-]\d{4}$", t):
        t = t[:-2] + ":" + t[-2:]
    try:
        value = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _TypeMismatch(text) from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    value = value.astimezone(dt.timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def _coerce(f: dict[str, Any], raw: Any, source: str) -> Any:
    """Convert an incoming JSON value or CSV string to the stored Python value."""
    t = f["type"]
    if raw is None or raw == "":
        # Salesforce stores empty strings as null.
        return None
    if isinstance(raw, (dict, list)):
        raise _TypeMismatch(raw)
    if t in _TEXT_TYPES or t in ("id", "reference"):
        if isinstance(raw, bool):
            return "true" if raw else "false"
        return str(raw)
    if t in _NUMBER_TYPES or t == "int":
        if isinstance(raw, bool):
            raise _TypeMismatch(raw)
        if isinstance(raw, (int, float)):
            num = float(raw)
        elif isinstance(raw, str) and _NUM_RE.match(raw.strip()):
            num = float(raw.strip())
        else:
            raise _TypeMismatch(raw)
        if t == "int":
            if not num.is_integer():
                raise _TypeMismatch(raw)
            return int(num)
        return num
    if t == "boolean":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0"):
            return raw.strip().lower() in ("true", "1")
        raise _TypeMismatch(raw)
    if t == "date":
        text = str(raw)
        if _DATETIME_RE.match(text) and "T" in text and source == "csv":
            text = text[:10]
        if not _DATE_RE.match(text):
            raise _TypeMismatch(raw)
        try:
            dt.date.fromisoformat(text)
        except ValueError as exc:
            raise _TypeMismatch(raw) from exc
        return text
    if t == "datetime":
        text = str(raw)
        if _DATE_RE.match(text) and source == "csv":
            text += "T00:00:00Z"
        return _normalize_datetime(text)
    raise _TypeMismatch(raw)


# ---------------------------------------------------------------------------------------------
# SOQL subset: SELECT f, ... | COUNT() FROM Obj [WHERE ...] [ORDER BY ...] [LIMIT n] [OFFSET n]
# ---------------------------------------------------------------------------------------------

_KEYWORDS = {
    "select",
    "from",
    "where",
    "and",
    "or",
    "not",
    "in",
    "like",
    "limit",
    "offset",
    "order",
    "by",
    "asc",
    "desc",
    "nulls",
    "first",
    "last",
    "null",
    "true",
    "false",
    "includes",
    "excludes",
    "group",
    "having",
    "with",
    "for",
    "using",
    "typeof",
}
_LEX = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?(?:Z|[+-]\d{2}:\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})(?![\w:.])
  | (?P<number>[+-]?(?:\d+(?:\.\d+)?|\.\d+))(?![\w.])
  | (?P<ident>[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*)
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
    """,
    re.X,
)
_STRING_ESCAPES = {"'": "'", '"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


@dataclass
class _Tok:
    kind: str  # ident | kw | string | number | date | datetime | op | punct | eof
    value: Any
    pos: int
    text: str
    like: str | None = None  # regex for LIKE, built with the \_ \% escapes honoured


@dataclass
class _SoqlAst:
    obj: _Tok
    fields: list[_Tok]
    count: bool
    where: Any
    order: list[tuple[_Tok, bool, bool | None]]  # (field, descending, nulls_last)
    limit: int | None
    offset: int


def _scan_string(q: str, start: int) -> tuple[str, str, int]:
    """Scan a quoted SOQL string literal, applying Salesforce's escape rules."""
    i, n = start + 1, len(q)
    out: list[str] = []
    like: list[str] = []
    while True:
        if i >= n:
            raise _soql_error("MALFORMED_QUERY", q, start, "unterminated string literal (missing closing ')")
        c = q[i]
        if c == "'":
            return "".join(out), "".join(like), i + 1
        if c == "\\":
            e = q[i + 1] if i + 1 < n else ""
            if e in _STRING_ESCAPES and e:
                out.append(_STRING_ESCAPES[e])
                like.append(re.escape(_STRING_ESCAPES[e]))
            elif e in ("_", "%") and e:
                out.append(e)
                like.append(re.escape(e))
            else:
                raise _soql_error(
                    "MALFORMED_QUERY",
                    q,
                    i,
                    f"Invalid string literal. Illegal character sequence '\\{e}' in string literal.",
                )
            i += 2
            continue
        out.append(c)
        like.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1


def _lex(q: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(q)
    while i < n:
        if q[i] == "'":
            value, like, end = _scan_string(q, i)
            toks.append(_Tok("string", value, i, q[i:end], like))
            i = end
            continue
        m = _LEX.match(q, i)
        if not m:
            raise _soql_error("MALFORMED_QUERY", q, i, f"unexpected token: '{q[i]}'")
        kind, text = m.lastgroup or "", m.group()
        if kind != "ws":
            value: Any = text
            if kind == "ident" and text.lower() in _KEYWORDS:
                kind, value = "kw", text.lower()
            elif kind == "op" and text == "<>":
                value = "!="
            toks.append(_Tok(kind, value, i, text))
        i = m.end()
    toks.append(_Tok("eof", None, n, ""))
    return toks


class _SoqlParser:
    """Recursive-descent parser for the supported SOQL subset."""

    def __init__(self, query: str) -> None:
        self.q = query
        self.toks = _lex(query)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def fail(self, tok: _Tok, message: str | None = None) -> _ApiError:
        return _soql_error(
            "MALFORMED_QUERY", self.q, tok.pos, message or f"unexpected token: '{tok.text or '<EOF>'}'"
        )

    def is_kw(self, word: str) -> bool:
        tok = self.peek()
        return tok.kind == "kw" and tok.value == word

    def accept_kw(self, word: str) -> bool:
        if self.is_kw(word):
            self.i += 1
            return True
        return False

    def expect_kw(self, word: str) -> None:
        if not self.accept_kw(word):
            raise self.fail(self.peek())

    def expect_punct(self, ch: str) -> None:
        tok = self.next()
        if tok.kind != "punct" or tok.value != ch:
            raise self.fail(tok)

    def ident(self) -> _Tok:
        tok = self.next()
        if tok.kind != "ident":
            raise self.fail(tok)
        return tok

    def parse(self) -> _SoqlAst:
        self.expect_kw("select")
        fields: list[_Tok] = []
        count = False
        first = self.peek()
        if first.kind == "ident" and first.value.lower() == "count" and self.toks[self.i + 1].value == "(":
            self.i += 1
            self.expect_punct("(")
            self.expect_punct(")")
            count = True
        else:
            fields.append(self.ident())
            while self.peek().kind == "punct" and self.peek().value == ",":
                self.i += 1
                fields.append(self.ident())
        self.expect_kw("from")
        obj = self.ident()
        where = self.condition() if self.accept_kw("where") else None
        order: list[tuple[_Tok, bool, bool | None]] = []
        if self.accept_kw("order"):
            self.expect_kw("by")
            while True:
                ftok = self.ident()
                desc = False
                if self.accept_kw("desc"):
                    desc = True
                else:
                    self.accept_kw("asc")
                nulls_last: bool | None = None
                if self.accept_kw("nulls"):
                    if self.accept_kw("last"):
                        nulls_last = True
                    else:
                        self.expect_kw("first")
                        nulls_last = False
                order.append((ftok, desc, nulls_last))
                if self.peek().kind == "punct" and self.peek().value == ",":
                    self.i += 1
                    continue
                break
        limit = self.int_clause("limit")
        offset = self.int_clause("offset") or 0
        if self.peek().kind != "eof":
            raise self.fail(self.peek())
        return _SoqlAst(obj, fields, count, where, order, limit, offset)

    def int_clause(self, word: str) -> int | None:
        if not self.accept_kw(word):
            return None
        tok = self.next()
        if tok.kind != "number" or not tok.text.isdigit():
            raise self.fail(tok)
        return int(tok.text)

    def condition(self) -> Any:
        # SOQL rejects mixing AND and OR at one level without parentheses.
        items = [self.unary()]
        op: str | None = None
        while self.peek().kind == "kw" and self.peek().value in ("and", "or"):
            tok = self.next()
            if op is not None and tok.value != op:
                raise self.fail(tok)
            op = tok.value
            items.append(self.unary())
        return items[0] if op is None else (op, items)

    def unary(self) -> Any:
        if self.accept_kw("not"):
            return ("not", self.unary())
        tok = self.peek()
        if tok.kind == "punct" and tok.value == "(":
            self.i += 1
            inner = self.condition()
            self.expect_punct(")")
            return inner
        return self.comparison()

    def comparison(self) -> Any:
        ftok = self.ident()
        tok = self.peek()
        if tok.kind == "op":
            self.i += 1
            return ("cmp", ftok, tok.value, self.literal())
        if self.accept_kw("in"):
            return ("in", ftok, False, self.literal_list())
        if self.accept_kw("not"):
            self.expect_kw("in")
            return ("in", ftok, True, self.literal_list())
        if self.accept_kw("like"):
            lit = self.literal()
            if lit.kind != "string":
                raise self.fail(lit)
            return ("like", ftok, lit)
        raise self.fail(tok)

    def literal(self) -> _Tok:
        tok = self.next()
        if tok.kind in ("string", "number", "date", "datetime"):
            return tok
        if tok.kind == "kw" and tok.value in ("true", "false", "null"):
            return tok
        raise self.fail(tok)

    def literal_list(self) -> list[_Tok]:
        self.expect_punct("(")
        items = [self.literal()]
        while self.peek().kind == "punct" and self.peek().value == ",":
            self.i += 1
            items.append(self.literal())
        self.expect_punct(")")
        return items


# ---------------------------------------------------------------------------------------------
# Org state
# ---------------------------------------------------------------------------------------------


@dataclass
class _SObject:
    name: str
    label: str
    key_prefix: str
    fields: dict[str, dict[str, Any]]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: dict[str, dict[str, Any]] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    counter: int = 0

    def __post_init__(self) -> None:
        self.lower = {name.lower(): name for name in self.fields}

    def field(self, name: str) -> dict[str, Any] | None:
        canonical = self.lower.get(name.lower())
        return self.fields[canonical] if canonical else None


@dataclass
class _Plan:
    op: str  # create | update | delete | hard_delete
    sobj: _SObject
    record_id: str | None
    values: dict[str, Any]
    created: bool = False


@dataclass
class _IngestJob:
    id: str
    object: str
    operation: str
    external_id: str | None
    line_ending: str
    column_delimiter: str
    api_version: str
    created: str
    state: str = "Open"
    data: str | None = None
    error_message: str | None = None
    header: list[str] = field(default_factory=list)
    successful: list[list[str]] = field(default_factory=list)
    failed: list[list[str]] = field(default_factory=list)
    unprocessed: list[list[str]] = field(default_factory=list)
    processing_ms: int = 0
    modstamp: str = ""


@dataclass
class _QueryJob:
    id: str
    query: str
    operation: str
    object: str
    line_ending: str
    column_delimiter: str
    api_version: str
    created: str
    state: str = "UploadComplete"
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    error_message: str | None = None
    modstamp: str = ""


@dataclass
class _Grant:
    token: str
    kind: str  # access | refresh
    username: str
    client_id: str
    refresh: str | None = None
    revoked: bool = False


@dataclass
class _Resp:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json;charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)
    kind: str | None = None


@dataclass
class _Req:
    method: str
    path: str
    params: dict[str, str]
    headers: Mapping[str, str]
    body: bytes
    version: str
    groups: dict[str, str]

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8") or "null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _ApiError.of(
                400, "JSON_PARSER_ERROR", f"Unexpected character in request body: {exc}"
            ) from exc

    def form(self) -> dict[str, str]:
        parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        out = {k: v[0] for k, v in parsed.items()}
        for k, v in self.params.items():
            out.setdefault(k, v)
        return out


def _json_resp(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> _Resp:
    return _Resp(status, json.dumps(payload).encode(), headers=dict(headers or {}))


_DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
_LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
_INGEST_OPS = {"insert", "update", "upsert", "delete", "hardDelete"}
_LOCK_MESSAGE = "unable to obtain exclusive access to this record"
_ROLLBACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was using AllOrNone header",
    "fields": [],
}
_INVALID_SESSION = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
_NOT_FOUND = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]

# (method, regex relative to /services/data/vNN.N/, call-log kind, handler method name)
_DATA_ROUTES: list[tuple[str, re.Pattern[str], str, str]] = [
    (m, re.compile(p, re.I), k, h)
    for m, p, k, h in [
        ("GET", r"", "other", "_h_resources"),
        ("GET", r"limits/?", "other", "_h_limits"),
        ("GET", r"sobjects/?", "describe", "_h_global_describe"),
        ("GET", r"sobjects/(?P<obj>\w+)/describe/?", "describe", "_h_describe"),
        ("GET", r"sobjects/(?P<obj>\w+)/?", "describe", "_h_sobject_info"),
        ("POST", r"sobjects/(?P<obj>\w+)/?", "create", "_h_create_single"),
        ("GET", r"sobjects/(?P<obj>\w+)/(?P<rid>\w+)/?", "other", "_h_retrieve"),
        ("PATCH", r"sobjects/(?P<obj>\w+)/(?P<rid>\w+)/?", "update_single", "_h_update_single"),
        ("DELETE", r"sobjects/(?P<obj>\w+)/(?P<rid>\w+)/?", "delete", "_h_delete_single"),
        ("PATCH", r"sobjects/(?P<obj>\w+)/(?P<ext>\w+)/(?P<val>[^/]+)/?", "create", "_h_upsert_single"),
        ("GET", r"(?P<ep>query|queryAll)/?", "query", "_h_query"),
        ("GET", r"(?P<ep>query|queryAll)/(?P<loc>01g\w+)-(?P<offset>\d+)/?", "query_more", "_h_query_more"),
        ("PATCH", r"composite/sobjects/?", "composite_update", "_h_composite_update"),
        ("POST", r"composite/sobjects/?", "create", "_h_composite_create"),
        ("DELETE", r"composite/sobjects/?", "delete", "_h_composite_delete"),
        ("POST", r"jobs/ingest/?", "bulk_ingest_create", "_h_ingest_create"),
        ("GET", r"jobs/ingest/?", "other", "_h_ingest_list"),
        ("PUT", r"jobs/ingest/(?P<job>\w+)/batches/?", "bulk_ingest_upload", "_h_ingest_upload"),
        ("PATCH", r"jobs/ingest/(?P<job>\w+)/?", "bulk_ingest_close", "_h_ingest_state"),
        ("GET", r"jobs/ingest/(?P<job>\w+)/?", "bulk_ingest_status", "_h_ingest_status"),
        ("DELETE", r"jobs/ingest/(?P<job>\w+)/?", "other", "_h_ingest_delete"),
        (
            "GET",
            r"jobs/ingest/(?P<job>\w+)/(?P<rtype>successfulResults|failedResults|unprocessedRecords)/?",
            "bulk_ingest_results",
            "_h_ingest_results",
        ),
        ("POST", r"jobs/query/?", "bulk_query_create", "_h_bulk_query_create"),
        ("GET", r"jobs/query/?", "other", "_h_bulk_query_list"),
        ("GET", r"jobs/query/(?P<job>\w+)/?", "bulk_query_status", "_h_bulk_query_status"),
        ("PATCH", r"jobs/query/(?P<job>\w+)/?", "other", "_h_bulk_query_state"),
        ("DELETE", r"jobs/query/(?P<job>\w+)/?", "other", "_h_bulk_query_delete"),
        ("GET", r"jobs/query/(?P<job>\w+)/results/?", "bulk_query_results", "_h_bulk_query_results"),
    ]
]
_OTHER_ROUTES: list[tuple[str, re.Pattern[str], str, str]] = [
    ("GET", re.compile(r"/services/oauth2/authorize/?"), "other", "_h_authorize"),
    ("POST", re.compile(r"/services/oauth2/token/?"), "token", "_h_token"),
    ("POST", re.compile(r"/services/oauth2/revoke/?"), "revoke", "_h_revoke"),
    ("GET", re.compile(r"/services/oauth2/revoke/?"), "revoke", "_h_revoke"),
    ("GET", re.compile(r"/services/oauth2/userinfo/?"), "other", "_h_userinfo"),
    ("GET", re.compile(r"/id/(?P<org>\w+)/(?P<user>\w+)/?"), "other", "_h_userinfo"),
    ("GET", re.compile(r"/services/data/?"), "other", "_h_versions"),
]
_DATA_PREFIX = re.compile(r"^/services/data/v(?P<version>\d+\.\d+)/(?P<rest>.*)$")


# ---------------------------------------------------------------------------------------------
# TLS material
# ---------------------------------------------------------------------------------------------


def _write_certs(directory: str) -> tuple[str, str, str]:
    """Create a throwaway CA and a server cert for 127.0.0.1/localhost; return (ca, cert, key) paths."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FakeSalesforce Test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = os.path.join(directory, "ca.pem")
    cert_path = os.path.join(directory, "server.pem")
    key_path = os.path.join(directory, "server.key")
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    with open(ca_path, "wb") as fh:
        fh.write(ca_pem)
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    with open(key_path, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return ca_path, cert_path, key_path


# ---------------------------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, addr: tuple[str, int], fake: FakeSalesforce, context: ssl.SSLContext) -> None:
        self.fake = fake
        self.ssl_context = context
        super().__init__(addr, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake in the per-connection thread so a slow client cannot stall accept().
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeSalesforce/1.0"
    timeout = 120
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def parse_request(self) -> bool:
        # Enforce the URI limit on the raw request line, before any parsing, like Salesforce's edge.
        parts = self.raw_requestline.split(b" ")
        if len(parts) >= 2 and len(parts[1]) > self.server.fake.max_uri_length:
            method = parts[0].decode("latin-1", "replace")
            path = urlsplit(parts[1].decode("latin-1", "replace")).path
            self.server.fake._log_call(method, path, self.server.fake._classify(method, path, b""), 414)
            body = b"<html><body><h1>414 Request-URI Too Long</h1></body></html>"
            self.wfile.write(
                b"HTTP/1.1 414 Request-URI Too Long\r\nContent-Type: text/html\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            self.close_connection = True
            return False
        return super().parse_request()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        body = self._read_body()
        resp = self.server.fake._dispatch(self.command, self.path, self.headers, body)
        self.send_response(resp.status)
        if resp.content_type:
            self.send_header("Content-Type", resp.content_type)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if resp.body:
            self.wfile.write(resp.body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve


class _LoginRedirectAdapter(HTTPAdapter):
    """Sends requests for login/test.salesforce.com to the fake (simple-salesforce hard-codes them)."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        request.url = self.base_url + parts.path + (f"?{parts.query}" if parts.query else "")
        return super().send(request, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# The fake org
# ---------------------------------------------------------------------------------------------


class FakeSalesforce:
    """A Salesforce org over HTTPS on 127.0.0.1 (see module docstring).

    Args:
        with_standard_objects: pre-create Account, Contact and Lead with common fields.
        username: default user for issued tokens and the OAuth code flow.
        bulk_processing_delay: seconds between closing a Bulk 2.0 job and processing it
            (0 processes synchronously, so the first status poll already sees JobComplete).
        latency: artificial delay in seconds added to every request.
        page_size: default REST query page size (Salesforce uses 2,000).
        strict_deserialization: reject a whole sObject Collections request (400 INVALID_FIELD /
            JSON_PARSER_ERROR) for unknown fields or wrongly typed values instead of failing only
            the offending record.
        max_uri_length: request-URIs longer than this get HTTP 414.
        api_request_limit: the daily limit reported in the Sforce-Limit-Info header.
    """

    def __init__(
        self,
        *,
        with_standard_objects: bool = False,
        username: str = "integration.user@example.com",
        bulk_processing_delay: float = 0.0,
        latency: float = 0.0,
        page_size: int = 2000,
        strict_deserialization: bool = False,
        max_uri_length: int = 16384,
        api_request_limit: int = 100000,
        host: str = "127.0.0.1",
    ) -> None:
        self.username = username
        self.bulk_processing_delay = bulk_processing_delay
        self.latency = latency
        self.page_size = page_size
        self.strict_deserialization = strict_deserialization
        self.max_uri_length = max_uri_length
        self.api_request_limit = api_request_limit
        self.host = host
        self.org_id = _random_id("00D")
        self.url = ""
        self.ca_file = ""
        self.calls: list[dict[str, Any]] = []
        self.server_errors: list[str] = []
        self.authorization_requests: list[dict[str, str]] = []
        self.jwt_audiences: set[str] = {"https://login.salesforce.com", "https://test.salesforce.com"}

        self._lock = threading.RLock()  # org data, jobs, cursors
        self._meta_lock = threading.RLock()  # tokens, faults, call log
        self._sobjects: dict[str, _SObject] = {}
        self._custom_prefix = _B62.index("a") * 62 * 62 + _B62.index("0") * 62 + _B62.index("X")
        self._users: dict[str, str] = {}
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self._codes: dict[str, dict[str, Any]] = {}
        self._oauth_clients: dict[str, dict[str, Any]] = {}
        self._jwt_clients: dict[str, dict[str, Any]] = {}
        self._cursors: dict[str, dict[str, Any]] = {}
        self._ingest_jobs: dict[str, _IngestJob] = {}
        self._query_jobs: dict[str, _QueryJob] = {}
        self._lock_faults: dict[str, int] = {}
        self._fail_requests: list[int] = []
        self._limit_exceeded = 0
        self._api_count = 0
        self._signing_secret = secrets.token_bytes(32)
        self._tmpdir: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        if with_standard_objects:
            self.add_standard_objects()

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeSalesforce:
        """Generate TLS material and start serving on a free port."""
        if self._server is not None:
            return self
        self._tmpdir = tempfile.mkdtemp(prefix="fake-sf-")
        self.ca_file, cert, key = _write_certs(self._tmpdir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = _Server((self.host, 0), self, context)
        self.url = f"https://{self.host}:{self._server.server_address[1]}"
        self.jwt_audiences.add(self.url)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-salesforce",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the server and remove the temporary certificate directory."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> FakeSalesforce:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- client helpers ------------------------------------------------------------------------

    def session(self, route_login_domains: bool = False) -> requests.Session:
        """A requests Session trusting the fake's CA.

        With ``route_login_domains`` requests to https://login.salesforce.com and
        https://test.salesforce.com are sent to the fake, so simple-salesforce's built-in JWT
        login works unmodified.
        """
        sess = requests.Session()
        sess.verify = self.ca_file
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override Session.verify, so ignore the
        # environment; the fake is on loopback, so proxies from the environment are not wanted either.
        sess.trust_env = False
        if route_login_domains:
            adapter = _LoginRedirectAdapter(self.url)
            sess.mount("https://login.salesforce.com", adapter)
            sess.mount("https://test.salesforce.com", adapter)
        return sess

    def client(self, version: str = "59.0", username: str | None = None) -> Any:
        """A ``simple_salesforce.Salesforce`` with a fresh access token and a trusting session."""
        from simple_salesforce import Salesforce

        return Salesforce(
            instance_url=self.url,
            session_id=self.issue_access_token(username),
            session=self.session(),
            version=version,
        )

    # -- schema --------------------------------------------------------------------------------

    def add_object(
        self,
        name: str,
        fields: Iterable[Mapping[str, Any]] = (),
        *,
        key_prefix: str | None = None,
        label: str | None = None,
    ) -> None:
        """Define (or replace) an sObject. Fields are describe()-shaped dicts; missing keys get
        defaults via :func:`sf_field`. Id, IsDeleted, CreatedDate, LastModifiedDate and
        SystemModstamp are added automatically."""
        described: dict[str, dict[str, Any]] = {}
        for f in _system_fields():
            described[f["name"]] = f
        for f in fields:
            spec = dict(f)
            fname = spec.pop("name")
            ftype = spec.pop("type", "string")
            described[fname] = sf_field(fname, ftype, **spec)
        with self._lock:
            prefix = key_prefix or STANDARD_KEY_PREFIXES.get(name.lower()) or self._next_custom_prefix()
            self._sobjects[name.lower()] = _SObject(name, label or _label_for(name), prefix, described)

    def _next_custom_prefix(self) -> str:
        used = {s.key_prefix for s in self._sobjects.values()}
        while True:
            prefix = _b62(self._custom_prefix, 3)
            self._custom_prefix += 1
            if prefix not in used:
                return prefix

    def add_standard_objects(self) -> None:
        """Add Account, Contact and Lead with commonly used standard fields."""
        for name, fields in _standard_objects().items():
            self.add_object(name, fields)

    def describe_object(self, name: str) -> dict[str, Any]:
        """The describe() payload for ``name`` (same as the REST endpoint returns)."""
        return self._describe_payload(self._sobject(name), "59.0")

    def _sobject(self, name: str) -> _SObject:
        sobj = self._sobjects.get(name.lower())
        if sobj is None:
            raise KeyError(f"unknown sObject {name!r}; call add_object() first")
        return sobj

    # -- data (test setup / inspection) --------------------------------------------------------

    def insert(self, object_name: str, records: Iterable[Mapping[str, Any]]) -> list[str]:
        """Insert records directly (test setup); returns their 18-char Ids.

        Values are validated like the API does, but read-only fields (e.g. CreatedDate) may be set.
        Raises ValueError on the first invalid record.
        """
        ids: list[str] = []
        with self._lock:
            sobj = self._sobject(object_name)
            for rec in records:
                pairs = [(k, v) for k, v in rec.items() if k.lower() not in ("attributes", "id")]
                given_id = next((v for k, v in rec.items() if k.lower() == "id"), None)
                try:
                    plan = self._plan_create(sobj, pairs, "json", setup=True)
                except _FieldError as exc:
                    raise ValueError(f"{exc.code}: {exc.message} {exc.fields}") from exc
                if given_id is not None:
                    rid = normalize_id(given_id)
                    if rid is None or not rid.startswith(sobj.key_prefix):
                        raise ValueError(f"invalid Id {given_id!r} for {sobj.name}")
                    plan.record_id = rid
                ids.append(self._apply(plan))
        return ids

    def get(self, object_name: str, record_id: str, include_deleted: bool = False) -> dict[str, Any] | None:
        """A copy of the record (all fields), or None."""
        rid = normalize_id(record_id)
        with self._lock:
            sobj = self._sobject(object_name)
            rec = sobj.records.get(rid or "") or (sobj.deleted.get(rid or "") if include_deleted else None)
            return dict(rec) if rec is not None else None

    def records(self, object_name: str) -> list[dict[str, Any]]:
        """Copies of all live records of ``object_name`` in insertion order."""
        with self._lock:
            return [dict(r) for r in self._sobject(object_name).records.values()]

    def count(self, object_name: str) -> int:
        """Number of live records."""
        with self._lock:
            return len(self._sobject(object_name).records)

    def delete(self, object_name: str, ids: Iterable[str]) -> None:
        """Soft-delete records (test setup): they move to the recycle bin, so updates get
        ENTITY_IS_DELETED and only queryAll sees them."""
        with self._lock:
            sobj = self._sobject(object_name)
            for raw in ids:
                rid = normalize_id(raw) or raw
                if rid not in sobj.records:
                    raise KeyError(f"no live {sobj.name} with Id {raw!r}")
                self._apply(_Plan("delete", sobj, rid, {}))

    # -- auth helpers --------------------------------------------------------------------------

    def _user_id(self, username: str) -> str:
        with self._meta_lock:
            if username not in self._users:
                self._users[username] = _random_id("005")
            return self._users[username]

    def issue_access_token(self, username: str | None = None, client_id: str = "fake-test-client") -> str:
        """Mint a valid access token (session id) for direct use with Salesforce(session_id=...)."""
        return self._new_access(username or self.username, client_id, None)

    def issue_refresh_token(self, username: str | None = None, client_id: str = "fake-test-client") -> str:
        """Mint a refresh token as if the user had completed the OAuth code flow."""
        return self._new_refresh(username or self.username, client_id)

    def _new_access(self, username: str, client_id: str, refresh: str | None) -> str:
        token = f"{self.org_id[:15]}!{secrets.token_urlsafe(72)}"
        with self._meta_lock:
            self._access[token] = _Grant(token, "access", username, client_id, refresh)
        self._user_id(username)
        return token

    def _new_refresh(self, username: str, client_id: str) -> str:
        token = "5Aep861" + secrets.token_urlsafe(60)
        with self._meta_lock:
            self._refresh[token] = _Grant(token, "refresh", username, client_id)
        return token

    def is_token_valid(self, token: str) -> bool:
        """True if ``token`` is a live access or refresh token."""
        with self._meta_lock:
            grant = self._access.get(token) or self._refresh.get(token)
            return bool(grant and not grant.revoked)

    def expire_access_tokens(self) -> None:
        """Invalidate every access token (simulates session timeout); refresh tokens stay valid."""
        with self._meta_lock:
            for grant in self._access.values():
                grant.revoked = True

    def register_oauth_client(
        self, client_id: str, client_secret: str | None = None, redirect_uris: Iterable[str] | None = None
    ) -> None:
        """Register a connected app; its secret and callback URLs are then enforced.
        Unregistered client_ids are accepted for the code flow."""
        with self._meta_lock:
            self._oauth_clients[client_id] = {
                "secret": client_secret,
                "redirect_uris": set(redirect_uris) if redirect_uris is not None else None,
            }

    def register_jwt_client(
        self, client_id: str, public_key_pem: str | bytes, usernames: Iterable[str] | None = None
    ) -> None:
        """Allow the JWT bearer flow for ``client_id`` (the JWT ``iss``) signed by this RSA public
        key (PEM public key or certificate). ``usernames`` limits pre-authorized users (None: any)."""
        pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        if b"BEGIN CERTIFICATE" in pem:
            key: Any = x509.load_pem_x509_certificate(pem).public_key()
        else:
            key = serialization.load_pem_public_key(pem)
        with self._meta_lock:
            self._jwt_clients[client_id] = {
                "key": key,
                "usernames": set(usernames) if usernames is not None else None,
            }

    # -- fault injection -----------------------------------------------------------------------

    def fail_lock(self, ids: Iterable[str], times: int = 1) -> None:
        """The next ``times`` save attempts on these records fail with UNABLE_TO_LOCK_ROW."""
        with self._meta_lock:
            for rid in ids:
                self._lock_faults[normalize_id(rid) or rid] = times

    def fail_next_requests(self, n: int, status: int = 503) -> None:
        """The next ``n`` data (/services/data) requests fail with HTTP ``status``."""
        with self._meta_lock:
            self._fail_requests.extend([status] * n)

    def request_limit_exceeded(self, n: int) -> None:
        """The next ``n`` authenticated data requests get 403 REQUEST_LIMIT_EXCEEDED."""
        with self._meta_lock:
            self._limit_exceeded += n

    def set_latency(self, seconds: float) -> None:
        """Add ``seconds`` of delay to every request."""
        self.latency = seconds

    def clear_faults(self) -> None:
        """Remove all pending injected faults and latency."""
        with self._meta_lock:
            self._lock_faults.clear()
            self._fail_requests.clear()
            self._limit_exceeded = 0
            self.latency = 0.0

    # -- call log ------------------------------------------------------------------------------

    def calls_by_kind(self) -> dict[str, int]:
        """Count of logged calls per kind."""
        with self._meta_lock:
            return dict(Counter(c["kind"] for c in self.calls))

    def reset_calls(self) -> None:
        """Clear the call log."""
        with self._meta_lock:
            self.calls.clear()

    def _log_call(self, method: str, path: str, kind: str, status: int) -> None:
        with self._meta_lock:
            self.calls.append({"method": method, "path": path, "kind": kind, "status": status})

    # -- bulk inspection -----------------------------------------------------------------------

    def ingest_jobs(self) -> list[dict[str, Any]]:
        """Job-info dicts of all Bulk 2.0 ingest jobs, oldest first."""
        with self._lock:
            return [self._ingest_info(j) for j in self._ingest_jobs.values()]

    def query_jobs(self) -> list[dict[str, Any]]:
        """Job-info dicts of all Bulk 2.0 query jobs, oldest first."""
        with self._lock:
            return [self._query_info(j) for j in self._query_jobs.values()]

    # =========================================================================================
    # Request dispatch
    # =========================================================================================

    def _route(self, method: str, path: str) -> tuple[str, str, dict[str, str], str, bool]:
        """Return (kind, handler, groups, api_version, path_known)."""
        m = _DATA_PREFIX.match(path)
        known = False
        if m:
            rest = m.group("rest")
            for r_method, pattern, kind, handler in _DATA_ROUTES:
                pm = pattern.fullmatch(rest)
                if pm:
                    known = True
                    if r_method == method:
                        return kind, handler, pm.groupdict(), m.group("version"), True
            return "other", "", {}, m.group("version"), known
        for r_method, pattern, kind, handler in _OTHER_ROUTES:
            pm = pattern.fullmatch(path)
            if pm:
                known = True
                if r_method == method:
                    return kind, handler, pm.groupdict(), "", True
        return "other", "", {}, "", known

    def _classify(self, method: str, path: str, body: bytes) -> str:
        kind = self._route(method, path)[0]
        if kind == "bulk_ingest_create":
            # Record-creating and record-deleting bulk jobs are logged like their REST equivalents.
            try:
                op = json.loads(body or b"{}").get("operation")
            except (ValueError, AttributeError):
                op = None
            if op in ("insert", "upsert"):
                return "create"
            if op in ("delete", "hardDelete"):
                return "delete"
        return kind

    def _dispatch(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> _Resp:
        parts = urlsplit(raw_path)
        path = parts.path
        params = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        _, handler, groups, version, known = self._route(method, path)
        kind = self._classify(method, path, body)
        try:
            if self.latency:
                time.sleep(self.latency)
            is_data = path.startswith("/services/data/v")
            if is_data:
                self._data_preflight(headers)
            if not handler:
                if known:
                    raise _ApiError.of(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed.")
                raise _ApiError(404, _NOT_FOUND)
            req = _Req(method, path, params, headers, body, version, groups)
            resp: _Resp = getattr(self, handler)(req)
            if is_data:
                with self._meta_lock:
                    self._api_count += 1
                    resp.headers.setdefault(
                        "Sforce-Limit-Info", f"api-usage={self._api_count}/{self.api_request_limit}"
                    )
        except _ApiError as exc:
            resp = _json_resp(exc.status, exc.payload, exc.headers)
        except Exception:  # report server bugs to both the client and the test
            self.server_errors.append(traceback.format_exc())
            resp = _json_resp(
                500, [{"errorCode": "UNKNOWN_EXCEPTION", "message": "An unexpected error occurred"}]
            )
        self._log_call(method, path, resp.kind or kind, resp.status)
        return resp

    def _data_preflight(self, headers: Mapping[str, str]) -> None:
        """Injected outages first (they precede auth at the edge), then auth, then API limits."""
        with self._meta_lock:
            status = self._fail_requests.pop(0) if self._fail_requests else None
        if status is not None:
            code = "SERVER_UNAVAILABLE" if status in (502, 503, 504) else "UNKNOWN_EXCEPTION"
            raise _ApiError.of(status, code, "Injected failure: service temporarily unavailable")
        self._authenticate(headers)
        with self._meta_lock:
            if self._limit_exceeded > 0:
                self._limit_exceeded -= 1
                raise _ApiError.of(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")

    def _authenticate(self, headers: Mapping[str, str]) -> _Grant:
        auth = headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        with self._meta_lock:
            grant = self._access.get(token.strip()) if scheme.lower() in ("bearer", "oauth") else None
            if grant is None or grant.revoked:
                raise _ApiError(401, _INVALID_SESSION, {"WWW-Authenticate": 'Token realm="Salesforce"'})
            return grant

    # =========================================================================================
    # OAuth 2.0
    # =========================================================================================

    def _oauth_error(self, error: str, description: str, status: int = 400) -> _ApiError:
        return _ApiError(status, {"error": error, "error_description": description})

    def _h_authorize(self, req: _Req) -> _Resp:
        p = req.params
        with self._meta_lock:
            self.authorization_requests.append(dict(p))
        if p.get("response_type") != "code":
            raise self._oauth_error("unsupported_response_type", "response type not supported")
        client_id, redirect_uri = p.get("client_id"), p.get("redirect_uri")
        if not client_id:
            raise self._oauth_error("invalid_client_id", "client identifier invalid")
        if not redirect_uri:
            raise self._oauth_error("redirect_uri_mismatch", "redirect_uri must match configuration")
        client = self._oauth_clients.get(client_id)
        if client and client["redirect_uris"] is not None and redirect_uri not in client["redirect_uris"]:
            raise self._oauth_error("redirect_uri_mismatch", "redirect_uri must match configuration")
        method = p.get("code_challenge_method") or ("S256" if p.get("code_challenge") else None)
        code = "aPrx" + secrets.token_urlsafe(48)
        with self._meta_lock:
            self._codes[code] = {
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "code_challenge": p.get("code_challenge"),
                "code_challenge_method": method,
                "username": p.get("login_hint") or self.username,
                "scope": p.get("scope") or "api refresh_token",
                "expires": time.time() + 900,
            }
        query = {"code": code}
        if "state" in p:
            query["state"] = p["state"]
        location = redirect_uri + ("&" if "?" in redirect_uri else "?") + urlencode(query)
        return _Resp(302, b"", None, {"Location": location})

    def _client_credentials(self, req: _Req, form: dict[str, str]) -> tuple[str | None, str | None]:
        auth = req.headers.get("Authorization") or ""
        if auth.lower().startswith("basic "):
            try:
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                return cid, secret
            except (ValueError, UnicodeDecodeError):
                pass
        return form.get("client_id"), form.get("client_secret")

    def _check_client_secret(self, client_id: str | None, secret: str | None) -> None:
        client = self._oauth_clients.get(client_id or "")
        if client and client["secret"] is not None and secret is not None and secret != client["secret"]:
            raise self._oauth_error("invalid_client", "invalid client credentials")

    def _token_payload(self, access: str, username: str, client_id: str, scope: str) -> dict[str, Any]:
        issued_at = str(int(time.time() * 1000))
        identity = f"{self.url}/id/{self.org_id}/{self._user_id(username)}"
        client = self._oauth_clients.get(client_id) or {}
        key = (client.get("secret") or "").encode() or self._signing_secret
        signature = base64.b64encode(hmac.new(key, (identity + issued_at).encode(), hashlib.sha256).digest())
        return {
            "access_token": access,
            "signature": signature.decode(),
            "scope": scope,
            "instance_url": self.url,
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }

    def _h_token(self, req: _Req) -> _Resp:
        form = req.form()
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._grant_code(req, form)
        if grant_type == "refresh_token":
            return self._grant_refresh(req, form)
        if grant_type == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._grant_jwt(form)
        raise self._oauth_error("unsupported_grant_type", "grant type not supported")

    def _grant_code(self, req: _Req, form: dict[str, str]) -> _Resp:
        client_id, secret = self._client_credentials(req, form)
        with self._meta_lock:
            entry = self._codes.get(form.get("code") or "")
            if entry is None:
                raise self._oauth_error("invalid_grant", "invalid authorization code")
            if entry["expires"] < time.time():
                del self._codes[form["code"]]
                raise self._oauth_error("invalid_grant", "expired authorization code")
            if client_id != entry["client_id"]:
                raise self._oauth_error("invalid_client_id", "client identifier invalid")
            self._check_client_secret(client_id, secret)
            if form.get("redirect_uri") != entry["redirect_uri"]:
                raise self._oauth_error("invalid_grant", "redirect_uri must match configuration")
            challenge = entry["code_challenge"]
            if challenge:
                verifier = form.get("code_verifier") or ""
                if entry["code_challenge_method"] == "plain":
                    expected = verifier
                else:
                    digest = hashlib.sha256(verifier.encode()).digest()
                    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                if not verifier or not hmac.compare_digest(expected, challenge):
                    raise self._oauth_error("invalid_grant", "invalid code verifier")
            # Codes are single use.
            del self._codes[form["code"]]
        refresh = self._new_refresh(entry["username"], entry["client_id"])
        access = self._new_access(entry["username"], entry["client_id"], refresh)
        payload = self._token_payload(access, entry["username"], entry["client_id"], entry["scope"])
        payload["refresh_token"] = refresh
        return _json_resp(200, payload)

    def _grant_refresh(self, req: _Req, form: dict[str, str]) -> _Resp:
        client_id, secret = self._client_credentials(req, form)
        with self._meta_lock:
            grant = self._refresh.get(form.get("refresh_token") or "")
            if grant is None or grant.revoked:
                raise self._oauth_error("invalid_grant", "expired access/refresh token")
            if client_id and client_id != grant.client_id:
                raise self._oauth_error("invalid_client_id", "client identifier invalid")
            self._check_client_secret(grant.client_id, secret)
        access = self._new_access(grant.username, grant.client_id, grant.token)
        # Salesforce does not rotate the refresh token by default, so none is returned.
        return _json_resp(
            200, self._token_payload(access, grant.username, grant.client_id, "api refresh_token")
        )

    def _grant_jwt(self, form: dict[str, str]) -> _Resp:
        assertion = form.get("assertion") or ""
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise self._oauth_error("invalid_grant", "invalid assertion") from exc
        client = self._jwt_clients.get(str(claims.get("iss")))
        if client is None:
            raise self._oauth_error("invalid_grant", "client identifier invalid")
        if header.get("alg") != "RS256":
            raise self._oauth_error("invalid_grant", "invalid assertion")
        try:
            jwt.decode(
                assertion,
                client["key"],
                algorithms=["RS256"],
                options={"verify_exp": False, "verify_aud": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.PyJWTError as exc:
            raise self._oauth_error("invalid_grant", "invalid assertion") from exc
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(a in self.jwt_audiences for a in auds):
            raise self._oauth_error("invalid_grant", "audience is invalid")
        try:
            exp = int(claims["exp"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._oauth_error("invalid_grant", "invalid assertion") from exc
        if exp <= time.time():
            raise self._oauth_error("invalid_grant", "expired authorization code")
        sub = claims.get("sub")
        if not sub:
            raise self._oauth_error("invalid_grant", "invalid assertion")
        if client["usernames"] is not None and sub not in client["usernames"]:
            raise self._oauth_error("invalid_grant", "user hasn't approved this consumer")
        access = self._new_access(sub, str(claims["iss"]), None)
        payload = self._token_payload(access, sub, str(claims["iss"]), "api")
        del payload["signature"], payload["issued_at"]  # JWT responses carry neither
        return _json_resp(200, payload)

    def _h_revoke(self, req: _Req) -> _Resp:
        token = req.form().get("token") or ""
        with self._meta_lock:
            if token in self._refresh:
                self._refresh[token].revoked = True
                # Revoking a refresh token also kills the sessions issued from it.
                for grant in self._access.values():
                    if grant.refresh == token:
                        grant.revoked = True
            elif token in self._access:
                self._access[token].revoked = True
            else:
                raise self._oauth_error("unsupported_token_type", "this token type is not supported")
        return _Resp(200, b"", None)

    def _h_userinfo(self, req: _Req) -> _Resp:
        grant = self._authenticate(req.headers)
        return _json_resp(
            200,
            {
                "user_id": self._user_id(grant.username),
                "organization_id": self.org_id,
                "username": grant.username,
                "preferred_username": grant.username,
                "email": grant.username,
                "active": True,
                "urls": {"rest": f"{self.url}/services/data/v{{version}}/"},
            },
        )

    def _h_versions(self, req: _Req) -> _Resp:
        return _json_resp(
            200,
            [{"label": "Fake", "url": f"/services/data/v{v}.0", "version": f"{v}.0"} for v in range(50, 63)],
        )

    # =========================================================================================
    # REST: describe / misc
    # =========================================================================================

    def _h_resources(self, req: _Req) -> _Resp:
        base = f"/services/data/v{req.version}"
        return _json_resp(
            200, {k: f"{base}/{k}" for k in ("sobjects", "query", "queryAll", "composite", "jobs")}
        )

    def _h_limits(self, req: _Req) -> _Resp:
        with self._meta_lock:
            used = self._api_count
        return _json_resp(
            200,
            {"DailyApiRequests": {"Max": self.api_request_limit, "Remaining": self.api_request_limit - used}},
        )

    def _req_sobject(self, name: str) -> _SObject:
        sobj = self._sobjects.get(name.lower())
        if sobj is None:
            raise _ApiError(404, _NOT_FOUND)
        return sobj

    def _sobject_summary(self, sobj: _SObject, version: str) -> dict[str, Any]:
        base = f"/services/data/v{version}/sobjects/{sobj.name}"
        return {
            "name": sobj.name,
            "label": sobj.label,
            "labelPlural": sobj.label + "s",
            "keyPrefix": sobj.key_prefix,
            "custom": sobj.name.endswith("__c"),
            "customSetting": False,
            "createable": True,
            "updateable": True,
            "deletable": True,
            "undeletable": True,
            "queryable": True,
            "retrieveable": True,
            "searchable": True,
            "layoutable": True,
            "mergeable": False,
            "replicateable": True,
            "triggerable": True,
            "feedEnabled": False,
            "activateable": False,
            "deprecatedAndHidden": False,
            "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
        }

    def _describe_payload(self, sobj: _SObject, version: str) -> dict[str, Any]:
        payload = self._sobject_summary(sobj, version)
        payload.update(
            {
                "fields": [dict(f) for f in sobj.fields.values()],
                "childRelationships": [],
                "recordTypeInfos": [],
                "supportedScopes": [{"label": "All records", "name": "everything"}],
            }
        )
        return payload

    def _h_global_describe(self, req: _Req) -> _Resp:
        with self._lock:
            objs = [self._sobject_summary(s, req.version) for s in self._sobjects.values()]
        return _json_resp(200, {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": objs})

    def _h_describe(self, req: _Req) -> _Resp:
        with self._lock:
            return _json_resp(200, self._describe_payload(self._req_sobject(req.groups["obj"]), req.version))

    def _h_sobject_info(self, req: _Req) -> _Resp:
        with self._lock:
            sobj = self._req_sobject(req.groups["obj"])
            return _json_resp(
                200, {"objectDescribe": self._sobject_summary(sobj, req.version), "recentItems": []}
            )

    # =========================================================================================
    # REST: SOQL query
    # =========================================================================================

    def _compile_where(
        self, node: Any, sobj: _SObject, q: str
    ) -> tuple[Callable[[dict[str, Any]], bool], set[str] | None]:
        """Compile a WHERE AST into a predicate plus, when possible, a candidate Id set."""
        kind = node[0]
        if kind in ("and", "or"):
            compiled = [self._compile_where(n, sobj, q) for n in node[1]]
            preds = [p for p, _ in compiled]
            if kind == "and":
                cands = [c for _, c in compiled if c is not None]
                cand = set.intersection(*cands) if cands else None
                return (lambda r: all(p(r) for p in preds)), cand
            return (lambda r: any(p(r) for p in preds)), None
        if kind == "not":
            inner, _ = self._compile_where(node[1], sobj, q)
            return (lambda r: not inner(r)), None
        f = self._soql_field(sobj, node[1], q, filtering=True)
        name, ftype = f["name"], f["type"]
        caseless = ftype in _TEXT_TYPES

        def get(r: dict[str, Any]) -> Any:
            v = r.get(name)
            return v.lower() if caseless and isinstance(v, str) else v

        if kind == "like":
            if not caseless:
                raise _soql_error("INVALID_FIELD", q, node[1].pos, f"invalid operator on {ftype} field: LIKE")
            rx = re.compile(node[2].like or "", re.I | re.S)
            return (lambda r: isinstance(r.get(name), str) and rx.fullmatch(r[name]) is not None), None
        if kind == "in":
            values = {self._soql_literal(f, t, q) for t in node[3]}
            if node[2]:
                return (lambda r: get(r) not in values), None
            cand = values - {None} if name == "Id" else None
            return (lambda r: get(r) in values), cand
        op, lit = node[2], self._soql_literal(f, node[3], q)
        if op == "=":
            return (lambda r: get(r) == lit), ({lit} if name == "Id" and lit else None)
        if op == "!=":
            return (lambda r: get(r) != lit), None
        if lit is None:
            return (lambda r: False), None
        compare = {
            "<": lambda a: a < lit,
            ">": lambda a: a > lit,
            "<=": lambda a: a <= lit,
            ">=": lambda a: a >= lit,
        }[op]

        def ordered(r: dict[str, Any]) -> bool:
            v = get(r)
            return v is not None and compare(v)

        return ordered, None

    def _soql_field(self, sobj: _SObject, tok: _Tok, q: str, filtering: bool = False) -> dict[str, Any]:
        name = tok.value
        if "." in name:
            rel = name.split(".")[0]
            raise _soql_error(
                "INVALID_FIELD",
                q,
                tok.pos,
                f"Didn't understand relationship '{rel}' in field path. If you are attempting to use a custom "
                "relationship, be sure to append the '__r' after the custom relationship name. Please reference "
                "your WSDL or the describe call for the appropriate names.",
            )
        f = sobj.field(name)
        if f is None:
            raise _soql_error(
                "INVALID_FIELD",
                q,
                tok.pos,
                f"No such column '{name}' on entity '{sobj.name}'. If you are attempting to use a custom field, be "
                "sure to append the '__c' after the custom field name. Please reference your WSDL or the describe "
                "call for the appropriate names.",
            )
        if filtering and not f["filterable"]:
            raise _soql_error(
                "INVALID_FIELD", q, tok.pos, f"field '{f['name']}' can not be filtered in a query call"
            )
        return f

    def _soql_literal(self, f: dict[str, Any], tok: _Tok, q: str) -> Any:
        """Convert a literal to the comparable form for field ``f`` (type-checked like SOQL)."""
        t = f["type"]
        if tok.kind == "kw" and tok.value == "null":
            return None

        def bad(expected: str, quoted: bool) -> _ApiError:
            how = "should be enclosed in quotes" if quoted else "should not be enclosed in quotes"
            return _soql_error(
                "INVALID_QUERY_FILTER_OPERATOR",
                q,
                tok.pos,
                f"value of filter criterion for field '{f['name']}' must be of type {expected} and {how}",
            )

        if t in _TEXT_TYPES:
            if tok.kind != "string":
                raise bad("string", True)
            return tok.value.lower()
        if t in ("id", "reference"):
            if tok.kind != "string":
                raise bad("id", True)
            rid = normalize_id(tok.value)
            if rid is None:
                if tok.value == "":
                    return None
                raise _soql_error(
                    "INVALID_QUERY_FILTER_OPERATOR", q, tok.pos, f"invalid ID field: {tok.value}"
                )
            return rid
        if t in _NUMBER_TYPES or t == "int":
            if tok.kind != "number":
                raise bad("double" if t != "int" else "int", False)
            return float(tok.value)
        if t == "boolean":
            if not (tok.kind == "kw" and tok.value in ("true", "false")):
                raise bad("boolean", False)
            return tok.value == "true"
        if t == "date":
            if tok.kind != "date":
                raise bad("date", False)
            return tok.value
        if t == "datetime":
            if tok.kind != "datetime":
                raise bad("dateTime", False)
            return _normalize_datetime(tok.value)
        raise bad(t, False)

    def _run_soql(
        self, query: str, include_deleted: bool
    ) -> tuple[_SObject, list[str], list[tuple[str, list[Any]]], bool]:
        """Execute ``query``; returns (sobject, selected field names, [(id, values)], count_only)."""
        ast = _SoqlParser(query).parse()
        with self._lock:
            sobj = self._sobjects.get(ast.obj.value.lower())
            if sobj is None:
                raise _soql_error(
                    "INVALID_TYPE",
                    query,
                    ast.obj.pos,
                    f"sObject type '{ast.obj.value}' is not supported. If you are attempting to use a custom object, "
                    "be sure to append the '__c' after the entity name. Please reference your WSDL or the describe "
                    "call for the appropriate names.",
                )
            names: list[str] = []
            for tok in ast.fields:
                fname = self._soql_field(sobj, tok, query)["name"]
                if fname in names:
                    raise _soql_error("MALFORMED_QUERY", query, tok.pos, f"duplicate field selected: {fname}")
                names.append(fname)
            pred, cand = self._compile_where(ast.where, sobj, query) if ast.where else (None, None)
            pools = [sobj.records, sobj.deleted] if include_deleted else [sobj.records]
            if cand is not None:
                found = [p[c] for c in cand for p in pools if c in p]
                found.sort(key=lambda r: sobj.seq.get(r["Id"], 0))
                rows = [r for r in found if pred is None or pred(r)]
            else:
                rows = [r for p in pools for r in p.values() if pred is None or pred(r)]
                if include_deleted and sobj.deleted:
                    rows.sort(key=lambda r: sobj.seq.get(r["Id"], 0))
            for ftok, desc, nulls_last in reversed(ast.order):
                f = self._soql_field(sobj, ftok, query)
                fname, caseless = f["name"], f["type"] in _TEXT_TYPES
                last = desc if nulls_last is None else nulls_last
                present = [r for r in rows if r.get(fname) is not None]
                missing = [r for r in rows if r.get(fname) is None]
                present.sort(key=lambda r, n=fname, c=caseless: r[n].lower() if c else r[n], reverse=desc)
                rows = present + missing if last else missing + present
            rows = rows[ast.offset :]
            if ast.limit is not None:
                rows = rows[: ast.limit]
            out = [(r["Id"], [r.get(n) for n in names]) for r in rows]
        return sobj, names, out, ast.count

    def _record_json(
        self, sobj: _SObject, rid: str, names: list[str], values: list[Any], version: str
    ) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "attributes": {"type": sobj.name, "url": f"/services/data/v{version}/sobjects/{sobj.name}/{rid}"}
        }
        rec.update(zip(names, values, strict=True))
        return rec

    def _query_page(self, locator: str, offset: int, version: str) -> _Resp:
        with self._lock:
            cursor = self._cursors.get(locator)
            if cursor is None or offset > len(cursor["rows"]):
                raise _ApiError.of(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            rows, sobj, names = cursor["rows"], cursor["sobj"], cursor["names"]
            end = min(offset + cursor["batch"], len(rows))
            payload: dict[str, Any] = {
                "totalSize": len(rows),
                "done": end >= len(rows),
                "records": [
                    self._record_json(sobj, rid, names, vals, version) for rid, vals in rows[offset:end]
                ],
            }
            if end < len(rows):
                payload["nextRecordsUrl"] = f"/services/data/v{version}/{cursor['endpoint']}/{locator}-{end}"
            else:
                # Salesforce frees the cursor once the last page is read.
                self._cursors.pop(locator, None)
        return _json_resp(200, payload)

    def _h_query(self, req: _Req) -> _Resp:
        q = req.params.get("q")
        if not q:
            raise _ApiError.of(400, "MALFORMED_QUERY", "A query string has to be specified")
        include_deleted = req.groups["ep"].lower() == "queryall"
        sobj, names, rows, count_only = self._run_soql(q, include_deleted)
        if count_only:
            return _json_resp(200, {"totalSize": len(rows), "done": True, "records": []})
        batch = self.page_size
        m = re.search(r"batchSize=(\d+)", req.headers.get("Sforce-Query-Options") or "")
        if m:
            batch = max(200, min(2000, int(m.group(1))))
        locator = to_18("01g" + "".join(secrets.choice(_B62) for _ in range(12)))
        with self._lock:
            self._cursors[locator] = {
                "rows": rows,
                "sobj": sobj,
                "names": names,
                "batch": batch,
                "endpoint": "queryAll" if include_deleted else "query",
            }
        return self._query_page(locator, 0, req.version)

    def _h_query_more(self, req: _Req) -> _Resp:
        return self._query_page(req.groups["loc"], int(req.groups["offset"]), req.version)

    # =========================================================================================
    # Saving records (shared by REST and Bulk)
    # =========================================================================================

    def _resolve_pairs(
        self, sobj: _SObject, pairs: Iterable[tuple[str, Any]]
    ) -> list[tuple[dict[str, Any], Any]]:
        out = []
        for key, raw in pairs:
            f = sobj.field(key)
            if f is None:
                raise _FieldError("INVALID_FIELD", f"No such column '{key}' on sobject of type {sobj.name}")
            out.append((f, raw))
        return out

    @staticmethod
    def _check_writable(pairs: list[tuple[dict[str, Any], Any]], flag: str) -> None:
        bad = [f["name"] for f, _ in pairs if not f[flag]]
        if bad:
            raise _FieldError(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: {', '.join(bad)}. Please check the security settings of this "
                "field and verify that it is read/write for your profile or permission set.",
                bad,
            )

    def _check_id_format(self, sobj: _SObject, raw: Any, op: str) -> str:
        if raw is None or raw == "":
            verb = "a delete" if op == "delete" else "an update"
            raise _FieldError("MISSING_ARGUMENT", f"Id not specified in {verb} call")
        rid = normalize_id(raw)
        if rid is None:
            raise _FieldError("MALFORMED_ID", f"malformed id {raw}", ["Id"])
        if not rid.startswith(sobj.key_prefix):
            raise _FieldError("MALFORMED_ID", f"{sobj.label} ID: id value of incorrect type: {raw}", ["Id"])
        return rid

    @staticmethod
    def _check_exists(sobj: _SObject, rid: str) -> None:
        if rid not in sobj.records:
            if rid in sobj.deleted:
                raise _FieldError("ENTITY_IS_DELETED", "entity is deleted")
            raise _FieldError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")

    def _check_lock(self, rid: str) -> None:
        with self._meta_lock:
            left = self._lock_faults.get(rid, 0)
            if left > 0:
                self._lock_faults[rid] = left - 1
                raise _FieldError("UNABLE_TO_LOCK_ROW", _LOCK_MESSAGE)

    def _convert(self, pairs: list[tuple[dict[str, Any], Any]], source: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for f, raw in pairs:
            try:
                value = _coerce(f, raw, source)
            except _TypeMismatch as exc:
                raise _FieldError(
                    "INVALID_TYPE_ON_FIELD_IN_RECORD",
                    f"{f['label']}: value not of required type: {raw}",
                    [f["name"]],
                ) from exc
            values[f["name"]] = self._check_value(f, value, raw)
        return values

    def _check_value(self, f: dict[str, Any], value: Any, raw: Any) -> Any:
        t, name, label = f["type"], f["name"], f["label"]
        if value is None:
            if t == "boolean":
                return False  # checkboxes cannot be null; the API stores false
            if not f["nillable"]:
                raise _FieldError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{name}]", [name])
            return None
        if t in _TEXT_TYPES:
            if len(value) > f["length"]:
                raise _FieldError(
                    "STRING_TOO_LONG",
                    f"{label}: data value too large: {value} (max length={f['length']})",
                    [name],
                )
            if t == "email" and not _EMAIL_RE.match(value):
                raise _FieldError("INVALID_EMAIL_ADDRESS", f"{label}: invalid email address: {value}", [name])
            if t in ("picklist", "multipicklist") and f["restrictedPicklist"]:
                allowed = {p["value"] for p in f["picklistValues"] if p.get("active", True)}
                chosen = value.split(";") if t == "multipicklist" else [value]
                if any(v not in allowed for v in chosen):
                    raise _FieldError(
                        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                        f"{label}: bad value for restricted picklist field: {value}",
                        [name],
                    )
        elif t in _NUMBER_TYPES:
            int_digits = len(str(int(abs(value))))
            if f["precision"] and int_digits > f["precision"] - f["scale"]:
                raise _FieldError(
                    "NUMBER_OUTSIDE_VALID_RANGE",
                    f"{label}: value outside of valid range on numeric field: {raw}",
                    [name],
                )
        elif t == "int" and abs(value) > 2**31 - 1:
            raise _FieldError(
                "NUMBER_OUTSIDE_VALID_RANGE",
                f"{label}: value outside of valid range on numeric field: {raw}",
                [name],
            )
        elif t in ("id", "reference"):
            rid = normalize_id(value)
            targets = [s for s in (self._sobjects.get(r.lower()) for r in f.get("referenceTo") or []) if s]
            target = next((s for s in targets if rid and rid.startswith(s.key_prefix)), None)
            if rid is None or (targets and target is None):
                raise _FieldError("MALFORMED_ID", f"{label}: id value of incorrect type: {value}", [name])
            # Lookups must point at an existing record when the target object is modelled.
            if target is not None and rid not in target.records:
                raise _FieldError(
                    "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {value}", [name]
                )
            return rid
        return value

    def _plan_update(self, sobj: _SObject, raw_id: Any, pairs: list[tuple[str, Any]], source: str) -> _Plan:
        # Check order mirrors Salesforce: Id syntax, field names, field access, existence, lock, values.
        rid = self._check_id_format(sobj, raw_id, "update")
        resolved = self._resolve_pairs(sobj, pairs)
        self._check_writable(resolved, "updateable")
        self._check_exists(sobj, rid)
        self._check_lock(rid)
        return _Plan("update", sobj, rid, self._convert(resolved, source))

    def _plan_create(
        self, sobj: _SObject, pairs: list[tuple[str, Any]], source: str, setup: bool = False
    ) -> _Plan:
        resolved = self._resolve_pairs(sobj, pairs)
        if not setup:
            self._check_writable(resolved, "createable")
        values = self._convert(resolved, source)
        missing = [
            f["name"]
            for f in sobj.fields.values()
            if not f["nillable"]
            and f["createable"]
            and not f["defaultedOnCreate"]
            and values.get(f["name"]) is None
        ]
        if missing:
            raise _FieldError(
                "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing
            )
        return _Plan("create", sobj, None, values, created=True)

    def _plan_delete(self, sobj: _SObject, raw_id: Any, hard: bool = False) -> _Plan:
        rid = self._check_id_format(sobj, raw_id, "delete")
        self._check_exists(sobj, rid)
        self._check_lock(rid)
        return _Plan("hard_delete" if hard else "delete", sobj, rid, {})

    def _apply(self, plan: _Plan, now: str | None = None) -> str:
        """Apply a validated plan; caller holds ``self._lock``."""
        sobj, now = plan.sobj, now or _now_iso()
        if plan.op == "create":
            sobj.counter += 1
            rid = plan.record_id or to_18(sobj.key_prefix + "Hs000" + _b62(sobj.counter, 7))
            rec: dict[str, Any] = {}
            for name, f in sobj.fields.items():
                rec[name] = f["defaultValue"] if f["defaultValue"] is not None else None
            rec.update(
                {
                    "Id": rid,
                    "IsDeleted": False,
                    "CreatedDate": now,
                    "LastModifiedDate": now,
                    "SystemModstamp": now,
                }
            )
            rec.update(plan.values)
            self._compute(sobj, rec)
            sobj.records[rid] = rec
            sobj.seq[rid] = sobj.counter
            return rid
        rid = plan.record_id or ""
        if plan.op == "update":
            rec = sobj.records[rid]
            rec.update(plan.values)
            rec["LastModifiedDate"] = rec["SystemModstamp"] = now
            self._compute(sobj, rec)
        elif plan.op in ("delete", "hard_delete"):
            rec = sobj.records.pop(rid)
            if plan.op == "delete":
                rec["IsDeleted"] = True
                rec["SystemModstamp"] = now
                sobj.deleted[rid] = rec
        return rid

    @staticmethod
    def _compute(sobj: _SObject, rec: dict[str, Any]) -> None:
        # Contact/Lead Name is a compound, read-only field derived from first and last name.
        if sobj.name in ("Contact", "Lead") and "Name" in sobj.fields and "LastName" in sobj.fields:
            rec["Name"] = " ".join(p for p in (rec.get("FirstName"), rec.get("LastName")) if p) or None

    def _save_collection(self, op: str, records: Any, all_or_none: bool) -> list[dict[str, Any]]:
        """sObject Collections create/update: per-record SaveResults, in request order."""
        if not isinstance(records, list):
            raise _ApiError.of(400, "JSON_PARSER_ERROR", "records must be a JSON array")
        if len(records) > 200:
            raise _ApiError.of(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        prepared: list[tuple[_SObject, dict[str, Any]]] = []
        with self._lock:
            for rec in records:
                if not isinstance(rec, dict):
                    raise _ApiError.of(400, "JSON_PARSER_ERROR", "Each record must be a JSON object")
                attrs = rec.get("attributes")
                tname = attrs.get("type") if isinstance(attrs, dict) else None
                if not tname:
                    raise _ApiError.of(400, "INVALID_TYPE", "Must send a concrete entity type.")
                sobj = self._sobjects.get(str(tname).lower())
                if sobj is None:
                    raise _ApiError.of(400, "INVALID_TYPE", f"sObject type '{tname}' is not supported.")
                if self.strict_deserialization:
                    self._strict_check(sobj, rec)
                prepared.append((sobj, rec))
            outcomes: list[tuple[_Plan | None, _FieldError | None]] = []
            for sobj, rec in prepared:
                pairs = [(k, v) for k, v in rec.items() if k != "attributes" and k.lower() != "id"]
                raw_id = next((v for k, v in rec.items() if k.lower() == "id"), None)
                try:
                    if op == "update":
                        plan = self._plan_update(sobj, raw_id, pairs, "json")
                    else:
                        if raw_id is not None:
                            raise _FieldError("INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
                        plan = self._plan_create(sobj, pairs, "json")
                    outcomes.append((plan, None))
                except _FieldError as exc:
                    outcomes.append((None, exc))
            any_failed = any(err is not None for _, err in outcomes)
            results: list[dict[str, Any]] = []
            for plan, err in outcomes:
                if err is not None:
                    # Failed SaveResults carry no id, like the real API.
                    results.append({"success": False, "errors": [err.as_json()]})
                elif all_or_none and any_failed:
                    entry: dict[str, Any] = {"success": False, "errors": [dict(_ROLLBACK)]}
                    if plan and plan.record_id:
                        entry = {"id": plan.record_id, **entry}
                    results.append(entry)
                else:
                    assert plan is not None
                    results.append({"id": self._apply(plan), "success": True, "errors": []})
        return results

    def _strict_check(self, sobj: _SObject, rec: dict[str, Any]) -> None:
        """Real deserialization failures reject the whole request (strict_deserialization=True)."""
        for key, raw in rec.items():
            if key == "attributes" or key.lower() == "id":
                continue
            f = sobj.field(key)
            if f is None:
                raise _ApiError.of(
                    400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {sobj.name}"
                )
            try:
                _coerce(f, raw, "json")
            except _TypeMismatch as exc:
                token = (
                    "VALUE_STRING"
                    if isinstance(raw, str)
                    else "VALUE_NUMBER"
                    if isinstance(raw, (int, float))
                    else "START_OBJECT"
                )
                raise _ApiError.of(
                    400,
                    "JSON_PARSER_ERROR",
                    f"Cannot deserialize instance of {f['soapType'].split(':')[1]} from {token} value {raw} or "
                    "request may be missing a required field",
                ) from exc

    def _h_composite_update(self, req: _Req) -> _Resp:
        data = req.json()
        if not isinstance(data, dict):
            raise _ApiError.of(400, "JSON_PARSER_ERROR", "Request body must be a JSON object")
        return _json_resp(
            200, self._save_collection("update", data.get("records"), bool(data.get("allOrNone")))
        )

    def _h_composite_create(self, req: _Req) -> _Resp:
        data = req.json()
        if not isinstance(data, dict):
            raise _ApiError.of(400, "JSON_PARSER_ERROR", "Request body must be a JSON object")
        return _json_resp(
            200, self._save_collection("create", data.get("records"), bool(data.get("allOrNone")))
        )

    def _h_composite_delete(self, req: _Req) -> _Resp:
        ids = [i for i in (req.params.get("ids") or "").split(",") if i]
        if len(ids) > 200:
            raise _ApiError.of(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        all_or_none = (req.params.get("allOrNone") or "").lower() == "true"
        with self._lock:
            outcomes: list[tuple[_Plan | None, _FieldError | None]] = []
            for raw in ids:
                rid = normalize_id(raw)
                sobj = next(
                    (s for s in self._sobjects.values() if rid and rid.startswith(s.key_prefix)), None
                )
                try:
                    if sobj is None:
                        raise _FieldError("MALFORMED_ID", f"malformed id {raw}", ["Id"])
                    outcomes.append((self._plan_delete(sobj, raw), None))
                except _FieldError as exc:
                    outcomes.append((None, exc))
            failed = any(e for _, e in outcomes)
            results: list[dict[str, Any]] = []
            for plan, err in outcomes:
                if err is not None:
                    results.append({"success": False, "errors": [err.as_json()]})
                elif all_or_none and failed:
                    results.append(
                        {
                            "id": plan.record_id if plan else None,
                            "success": False,
                            "errors": [dict(_ROLLBACK)],
                        }
                    )
                else:
                    assert plan is not None
                    results.append({"id": self._apply(plan), "success": True, "errors": []})
        return _json_resp(200, results)

    # -- single-record REST (implemented so tests can prove they are not used) -----------------

    @staticmethod
    def _single_error(err: _FieldError) -> _ApiError:
        status = 404 if err.code in ("ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY") else 400
        if status == 404 and err.code == "INVALID_CROSS_REFERENCE_KEY":
            return _ApiError(404, _NOT_FOUND)
        return _ApiError.of(status, err.code, err.message, err.fields)

    def _h_create_single(self, req: _Req) -> _Resp:
        data = req.json()
        if not isinstance(data, dict):
            raise _ApiError.of(400, "JSON_PARSER_ERROR", "Request body must be a JSON object")
        with self._lock:
            sobj = self._req_sobject(req.groups["obj"])
            try:
                plan = self._plan_create(sobj, [(k, v) for k, v in data.items() if k != "attributes"], "json")
            except _FieldError as exc:
                raise self._single_error(exc) from exc
            rid = self._apply(plan)
        return _json_resp(201, {"id": rid, "success": True, "errors": []})

    def _h_retrieve(self, req: _Req) -> _Resp:
        with self._lock:
            sobj = self._req_sobject(req.groups["obj"])
            rid = normalize_id(req.groups["rid"])
            rec = sobj.records.get(rid or "")
            if rec is None:
                raise _ApiError(404, _NOT_FOUND)
            wanted = [n for n in (req.params.get("fields") or "").split(",") if n]
            names = [self._soql_field(sobj, _Tok("ident", n, 0, n), n)["name"] for n in wanted] or list(
                sobj.fields
            )
            return _json_resp(
                200, self._record_json(sobj, rec["Id"], names, [rec.get(n) for n in names], req.version)
            )

    def _h_update_single(self, req: _Req) -> _Resp:
        data = req.json()
        if not isinstance(data, dict):
            raise _ApiError.of(400, "JSON_PARSER_ERROR", "Request body must be a JSON object")
        with self._lock:
            sobj = self._req_sobject(req.groups["obj"])
            pairs = [(k, v) for k, v in data.items() if k != "attributes" and k.lower() != "id"]
            try:
                plan = self._plan_update(sobj, req.groups["rid"], pairs, "json")
            except _FieldError as exc:
                raise self._single_error(exc) from exc
            self._apply(plan)
        return _Resp(204, b"", None)

    def _h_delete_single(self, req: _Req) -> _Resp:
        with self._lock:
            sobj = self._req_sobject(req.groups["obj"])
            try:
                plan = self._plan_delete(sobj, req.groups["rid"])
            except _FieldError as exc:
                raise self._single_error(exc) from exc
            self._apply(plan)
        return _Resp(204, b"", None)

    def _h_upsert_single(self, req: _Req) -> _Resp:
        data = req.json()
        if not isinstance(data, dict):
            raise _ApiError.of(400, "JSON_PARSER_ERROR", "Request body must be a JSON object")
        with self._lock:
            sobj = self._req_sobject(req.groups["obj"])
            pairs = [(k, v) for k, v in data.items() if k != "attributes"]
            try:
                matches = self._match_external(sobj, req.groups["ext"], [req.groups["val"]])[0]
                if len(matches) > 1:
                    return _json_resp(
                        300, [f"/services/data/v{req.version}/sobjects/{sobj.name}/{m}" for m in matches]
                    )
                if matches:
                    plan = self._plan_update(sobj, matches[0], pairs, "json")
                else:
                    ext = sobj.field(req.groups["ext"])
                    extra = [] if ext is None or ext["name"] == "Id" else [(ext["name"], req.groups["val"])]
                    plan = self._plan_create(sobj, pairs + extra, "json")
            except _FieldError as exc:
                raise self._single_error(exc) from exc
            rid = self._apply(plan)
        status = 201 if plan.created else 200
        return _json_resp(status, {"id": rid, "success": True, "errors": [], "created": plan.created})

    def _match_external(self, sobj: _SObject, field_name: str, values: list[str]) -> list[list[str]]:
        """Ids matching each external-Id value (one index build per call, not per value)."""
        f = sobj.field(field_name)
        if f is None:
            raise _FieldError(
                "INVALID_FIELD", f"No such column '{field_name}' on sobject of type {sobj.name}"
            )
        if f["name"] == "Id":
            return [[rid] if (rid := normalize_id(v)) in sobj.records else [] for v in values]
        if not (f["externalId"] or f["idLookup"]):
            raise _FieldError("INVALID_FIELD", f"Field {f['name']} is not an external id field", [f["name"]])
        index: dict[str, list[str]] = {}
        for rid, rec in sobj.records.items():
            v = rec.get(f["name"])
            if v is not None:
                index.setdefault(str(v).lower(), []).append(rid)
        return [index.get(v.lower(), []) if v else [] for v in values]

    # =========================================================================================
    # Bulk API 2.0 ingest
    # =========================================================================================

    def _ingest_info(self, job: _IngestJob) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": job.id,
            "operation": job.operation,
            "object": job.object,
            "createdById": self._user_id(self.username),
            "createdDate": job.created,
            "systemModstamp": job.modstamp or job.created,
            "state": job.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(job.api_version),
            "jobType": "V2Ingest",
            "contentUrl": f"services/data/v{job.api_version}/jobs/ingest/{job.id}/batches",
            "lineEnding": job.line_ending,
            "columnDelimiter": job.column_delimiter,
            "numberRecordsProcessed": len(job.successful) + len(job.failed),
            "numberRecordsFailed": len(job.failed),
            "retries": 0,
            "totalProcessingTime": job.processing_ms,
            "apiActiveProcessingTime": job.processing_ms,
            "apexProcessingTime": 0,
        }
        if job.external_id:
            info["externalIdFieldName"] = job.external_id
        if job.error_message:
            info["errorMessage"] = job.error_message
        return info

    def _ingest_job(self, job_id: str) -> _IngestJob:
        job = self._ingest_jobs.get(normalize_id(job_id) or job_id)
        if job is None:
            raise _ApiError(404, _NOT_FOUND)
        return job

    def _h_ingest_create(self, req: _Req) -> _Resp:
        data = req.json()
        if not isinstance(data, dict):
            raise _ApiError.of(400, "JSON_PARSER_ERROR", "Request body must be a JSON object")
        op = data.get("operation")
        if op not in _INGEST_OPS:
            raise _ApiError.of(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {op}")
        if data.get("contentType", "CSV") != "CSV":
            raise _ApiError.of(400, "INVALIDJOB", "InvalidJob : contentType must be CSV")
        delim = data.get("columnDelimiter", "COMMA")
        line_ending = data.get("lineEnding", "LF")
        if delim not in _DELIMITERS or line_ending not in _LINE_ENDINGS:
            raise _ApiError.of(400, "INVALIDJOB", "InvalidJob : invalid columnDelimiter or lineEnding")
        with self._lock:
            sobj = self._sobjects.get(str(data.get("object") or "").lower())
            if sobj is None:
                raise _ApiError.of(
                    400, "INVALIDJOB", f"InvalidJob : Unable to find object: {data.get('object')}"
                )
            ext = data.get("externalIdFieldName")
            if op == "upsert":
                ext_field = sobj.field(ext or "")
                if ext_field is None or not (ext_field["externalId"] or ext_field["name"] == "Id"):
                    raise _ApiError.of(
                        400, "INVALIDJOB", f"InvalidJob : External ID was blank or invalid: {ext}"
                    )
                ext = ext_field["name"]
            job = _IngestJob(
                id=_random_id("750"),
                object=sobj.name,
                operation=op,
                external_id=ext if op == "upsert" else None,
                line_ending=line_ending,
                column_delimiter=delim,
                api_version=req.version,
                created=_now_iso(),
            )
            self._ingest_jobs[job.id] = job
            return _json_resp(200, self._ingest_info(job))

    def _h_ingest_list(self, req: _Req) -> _Resp:
        with self._lock:
            records = [self._ingest_info(j) for j in self._ingest_jobs.values()]
        return _json_resp(200, {"done": True, "records": records, "nextRecordsUrl": None})

    def _h_ingest_upload(self, req: _Req) -> _Resp:
        with self._lock:
            job = self._ingest_job(req.groups["job"])
            if job.state != "Open":
                raise _ApiError.of(400, "INVALIDJOBSTATE", f"Job {job.id} is not in Open state")
            if job.data is not None:
                raise _ApiError.of(
                    400,
                    "BULK_API_ERROR",
                    f"Found multiple contents for job: <{job.id}>, please 'Close' / 'Abort' / 'Delete' the current Job "
                    "then create a new Job and make sure you only do 'PUT' once on a given Job.",
                )
            if not req.body:
                raise _ApiError.of(400, "INVALIDJOB", "InvalidJob : no data in upload")
            try:
                job.data = req.body.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise _ApiError.of(400, "INVALIDJOB", "InvalidJob : data must be UTF-8 encoded") from exc
        return _Resp(201, b"", None)

    def _h_ingest_state(self, req: _Req) -> _Resp:
        data = req.json()
        state = data.get("state") if isinstance(data, dict) else None
        with self._lock:
            job = self._ingest_job(req.groups["job"])
            if state == "UploadComplete":
                if job.state != "Open":
                    raise _ApiError.of(
                        400, "INVALIDJOBSTATE", f"Invalid state transition from {job.state} to {state}"
                    )
                job.state = "UploadComplete"
                job.modstamp = _now_iso()
                info = self._ingest_info(job)
                process_now = self.bulk_processing_delay <= 0
            elif state == "Aborted":
                if job.state not in ("Open", "UploadComplete", "InProgress"):
                    raise _ApiError.of(
                        400, "INVALIDJOBSTATE", f"Invalid state transition from {job.state} to {state}"
                    )
                job.state = "Aborted"
                job.modstamp = _now_iso()
                if job.data is not None and not (job.successful or job.failed):
                    # Uploaded rows of an aborted job are reported as unprocessed.
                    reader = csv.reader(
                        io.StringIO(job.data, newline=""), delimiter=_DELIMITERS[job.column_delimiter]
                    )
                    job.header = next(reader, [])
                    job.unprocessed = [r for r in reader if r]
                return _json_resp(200, self._ingest_info(job))
            else:
                raise _ApiError.of(400, "INVALIDJOBSTATE", f"Invalid state: {state}")
        if process_now:
            self._process_ingest(job)
        else:
            timer = threading.Timer(self.bulk_processing_delay, self._process_ingest, (job,))
            timer.daemon = True
            timer.start()
        return _json_resp(200, info)

    def _h_ingest_status(self, req: _Req) -> _Resp:
        with self._lock:
            return _json_resp(200, self._ingest_info(self._ingest_job(req.groups["job"])))

    def _h_ingest_delete(self, req: _Req) -> _Resp:
        with self._lock:
            job = self._ingest_job(req.groups["job"])
            if job.state not in ("UploadComplete", "JobComplete", "Aborted", "Failed"):
                raise _ApiError.of(
                    400, "INVALIDJOBSTATE", f"Job {job.id} cannot be deleted in state {job.state}"
                )
            del self._ingest_jobs[job.id]
        # Real Salesforce answers 204 No Content here.
        return _Resp(204, b"", None)

    def _h_ingest_results(self, req: _Req) -> _Resp:
        rtype = req.groups["rtype"].lower()
        with self._lock:
            job = self._ingest_job(req.groups["job"])
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
            orig = ",".join(_csv_header_cell(h) for h in job.header)
            if rtype == "successfulresults":
                buf.write('"sf__Id","sf__Created"' + ("," + orig if orig else "") + "\n")
                writer.writerows(job.successful)
            elif rtype == "failedresults":
                buf.write('"sf__Id","sf__Error"' + ("," + orig if orig else "") + "\n")
                writer.writerows(job.failed)
            else:
                if job.header:
                    buf.write(orig + "\n")
                writer.writerows(job.unprocessed)
        return _Resp(200, buf.getvalue().encode(), "text/csv")

    def _process_ingest(self, job: _IngestJob) -> None:
        """Parse and apply an uploaded CSV; per-row validation matches sObject Collections."""
        started = time.monotonic()
        with self._lock:
            if job.state != "UploadComplete":
                return
            job.state = "InProgress"
            try:
                self._run_ingest(job)
            except Exception:  # a bug here must surface as a failed job, not a hang
                self.server_errors.append(traceback.format_exc())
                job.state, job.error_message = (
                    "Failed",
                    "InternalServerError : fake failed to process the job",
                )
            job.processing_ms = int((time.monotonic() - started) * 1000)
            job.modstamp = _now_iso()

    def _run_ingest(self, job: _IngestJob) -> None:
        text = job.data
        if text is None:
            job.state, job.error_message = "Failed", "InvalidBatch : No data was uploaded for this job"
            return
        first_nl = text.find("\n")
        if first_nl > 0:
            crlf = text[first_nl - 1] == "\r"
            if crlf != (job.line_ending == "CRLF"):
                job.state = "Failed"
                job.error_message = f"ClientInputError : LineEnding is invalid on user data. Current LineEnding setting is {job.line_ending}"
                return
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=_DELIMITERS[job.column_delimiter])
        header = next(reader, None)
        if not header:
            job.state, job.error_message = "Failed", "InvalidBatch : No header row"
            return
        rows = [r for r in reader if r]
        job.header = header
        sobj = self._sobjects[job.object.lower()]
        cols: list[dict[str, Any]] = []
        for name in header:
            f = sobj.field(name.strip())
            if f is None:
                job.state, job.error_message = "Failed", f"InvalidBatch : Field name not found : {name}"
                job.unprocessed = rows
                return
            cols.append(f)
        if len({f["name"] for f in cols}) != len(cols):
            job.state, job.error_message = "Failed", "InvalidBatch : Duplicate field name in header"
            job.unprocessed = rows
            return
        id_idx = next((i for i, f in enumerate(cols) if f["name"] == "Id"), None)
        op = job.operation
        if op in ("delete", "hardDelete") and (id_idx is None or len(cols) != 1):
            job.state, job.error_message = (
                "Failed",
                "InvalidBatch : The 'delete' batch must contain only 'Id' column",
            )
            job.unprocessed = rows
            return
        ext_idx = None
        ext_matches: list[list[str]] = []
        repeated: set[str] = set()
        if op == "upsert":
            ext_idx = next((i for i, f in enumerate(cols) if f["name"] == job.external_id), None)
            if ext_idx is None:
                job.state = "Failed"
                job.error_message = f"InvalidBatch : Field name not found : {job.external_id}"
                job.unprocessed = rows
                return
            keys = [r[ext_idx] if ext_idx < len(r) else "" for r in rows]
            ext_matches = self._match_external(sobj, job.external_id or "Id", keys)
            # Salesforce rejects every row whose external Id appears more than once in the upload.
            repeated = {k for k, n in Counter(k.lower() for k in keys).items() if n > 1 and k}
        data_cols = [(i, f) for i, f in enumerate(cols) if i != id_idx]
        now = _now_iso()
        for n, row in enumerate(rows):
            if job.state == "Aborted":
                job.unprocessed = rows[n:]
                return
            row_id = row[id_idx] if id_idx is not None and id_idx < len(row) else ""
            try:
                if len(row) != len(cols):
                    raise _FieldError(
                        "INVALID_FIELD", f"Row has {len(row)} columns but the header has {len(cols)}"
                    )
                # Bulk semantics: an empty cell leaves the field alone; #N/A sets it to null.
                pairs = [
                    (f["name"], None if row[i] == "#N/A" else row[i]) for i, f in data_cols if row[i] != ""
                ]
                if op == "update":
                    plan = self._plan_update(sobj, row_id, pairs, "csv")
                elif op == "insert":
                    plan = self._plan_create(sobj, pairs, "csv")
                elif op == "upsert":
                    matches = ext_matches[n]
                    if ext_idx is not None and row[ext_idx].lower() in repeated:
                        raise _FieldError(
                            "DUPLICATE_VALUE",
                            f"Duplicate external id specified: {row[ext_idx]}",
                            [job.external_id or ""],
                        )
                    if len(matches) > 1:
                        raise _FieldError(
                            "DUPLICATE_EXTERNAL_ID",
                            f"{job.external_id}: more than one record found for external id field: {matches}",
                            [job.external_id or ""],
                        )
                    if matches:
                        upd = [(k, v) for k, v in pairs if k != job.external_id]
                        plan = self._plan_update(sobj, matches[0], upd, "csv")
                    else:
                        plan = self._plan_create(sobj, [(k, v) for k, v in pairs if k != "Id"], "csv")
                else:
                    plan = self._plan_delete(sobj, row_id, hard=op == "hardDelete")
            except _FieldError as exc:
                job.failed.append([normalize_id(row_id) or row_id, exc.as_bulk(), *row])
                continue
            rid = self._apply(plan, now)
            job.successful.append([rid, "true" if plan.created else "false", *row])
        job.state = "JobComplete"

    # =========================================================================================
    # Bulk API 2.0 query
    # =========================================================================================

    def _query_info(self, job: _QueryJob) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": job.id,
            "operation": job.operation,
            "object": job.object,
            "createdById": self._user_id(self.username),
            "createdDate": job.created,
            "systemModstamp": job.modstamp or job.created,
            "state": job.state,
            "concurrencyMode": "Parallel",
            "contentType": "CSV",
            "apiVersion": float(job.api_version),
            "jobType": "V2Query",
            "lineEnding": job.line_ending,
            "columnDelimiter": job.column_delimiter,
            "numberRecordsProcessed": len(job.rows) if job.state == "JobComplete" else 0,
            "retries": 0,
            "totalProcessingTime": 0,
            "isPkChunkingSupported": True,
        }
        if job.error_message:
            info["errorMessage"] = job.error_message
        return info

    def _query_job(self, job_id: str) -> _QueryJob:
        job = self._query_jobs.get(normalize_id(job_id) or job_id)
        if job is None:
            raise _ApiError(404, _NOT_FOUND)
        return job

    def _h_bulk_query_create(self, req: _Req) -> _Resp:
        data = req.json()
        if not isinstance(data, dict):
            raise _ApiError.of(400, "JSON_PARSER_ERROR", "Request body must be a JSON object")
        op = data.get("operation")
        if op not in ("query", "queryAll"):
            raise _ApiError.of(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {op}")
        delim = data.get("columnDelimiter", "COMMA")
        line_ending = data.get("lineEnding", "LF")
        if delim not in _DELIMITERS or line_ending not in _LINE_ENDINGS:
            raise _ApiError.of(400, "INVALIDJOB", "InvalidJob : invalid columnDelimiter or lineEnding")
        query = str(data.get("query") or "")
        # Validate up front: Salesforce rejects bad SOQL when the job is created.
        validated = self._run_soql(query, op == "queryAll")
        sobj, count_only = validated[0], validated[3]
        if count_only:
            raise _ApiError.of(400, "API_ERROR", "FeatureNotEnabled : Aggregate queries are not supported")
        job = _QueryJob(
            id=_random_id("750"),
            query=query,
            operation=op,
            object=sobj.name,
            line_ending=line_ending,
            column_delimiter=delim,
            api_version=req.version,
            created=_now_iso(),
        )
        with self._lock:
            self._query_jobs[job.id] = job
            info = self._query_info(job)
        if self.bulk_processing_delay <= 0:
            self._process_query_job(job, validated)
        else:
            # Delayed jobs snapshot the data when they run, like a real queued job.
            timer = threading.Timer(self.bulk_processing_delay, self._process_query_job, (job,))
            timer.daemon = True
            timer.start()
        return _json_resp(200, info)

    def _process_query_job(
        self,
        job: _QueryJob,
        result: tuple[_SObject, list[str], list[tuple[str, list[Any]]], bool] | None = None,
    ) -> None:
        try:
            sobj, names, rows, _ = result or self._run_soql(job.query, job.operation == "queryAll")
        except _ApiError as exc:
            with self._lock:
                job.state, job.error_message = "Failed", str(exc.payload)
            return
        types = [sobj.fields[n]["type"] for n in names]
        with self._lock:
            if job.state == "Aborted":
                return
            job.header = names
            job.rows = [[_csv_value(t, v) for t, v in zip(types, vals, strict=True)] for _, vals in rows]
            job.state = "JobComplete"
            job.modstamp = _now_iso()

    def _h_bulk_query_list(self, req: _Req) -> _Resp:
        with self._lock:
            records = [self._query_info(j) for j in self._query_jobs.values()]
        return _json_resp(200, {"done": True, "records": records, "nextRecordsUrl": None})

    def _h_bulk_query_status(self, req: _Req) -> _Resp:
        with self._lock:
            return _json_resp(200, self._query_info(self._query_job(req.groups["job"])))

    def _h_bulk_query_state(self, req: _Req) -> _Resp:
        data = req.json()
        with self._lock:
            job = self._query_job(req.groups["job"])
            if not isinstance(data, dict) or data.get("state") != "Aborted":
                raise _ApiError.of(400, "INVALIDJOBSTATE", "Only 'Aborted' can be set on a query job")
            if job.state not in ("UploadComplete", "InProgress"):
                raise _ApiError.of(
                    400, "INVALIDJOBSTATE", f"Invalid state transition from {job.state} to Aborted"
                )
            job.state = "Aborted"
            return _json_resp(200, self._query_info(job))

    def _h_bulk_query_delete(self, req: _Req) -> _Resp:
        with self._lock:
            job = self._query_job(req.groups["job"])
            del self._query_jobs[job.id]
        return _Resp(204, b"", None)

    def _h_bulk_query_results(self, req: _Req) -> _Resp:
        with self._lock:
            job = self._query_job(req.groups["job"])
            if job.state != "JobComplete":
                raise _ApiError.of(
                    400, "INVALIDJOBSTATE", f"Job {job.id} is not complete (state {job.state})"
                )
            offset = 0
            locator = req.params.get("locator")
            if locator:
                try:
                    offset = int(base64.b64decode(locator + "=" * (-len(locator) % 4)).decode())
                except (ValueError, UnicodeDecodeError) as exc:
                    raise _ApiError.of(400, "INVALIDLOCATOR", f"Invalid locator: {locator}") from exc
            raw_max = req.params.get("maxRecords")
            if raw_max is not None and (not raw_max.isdigit() or int(raw_max) < 1):
                raise _ApiError.of(400, "INVALIDPARAMETER", f"Invalid maxRecords: {raw_max}")
            page_size = int(raw_max) if raw_max else max(len(job.rows), 1)
            page = job.rows[offset : offset + page_size]
            end = offset + len(page)
            next_locator = (
                base64.b64encode(str(end).encode()).decode().rstrip("=") if end < len(job.rows) else "null"
            )
            buf = io.StringIO()
            writer = csv.writer(
                buf,
                delimiter=_DELIMITERS[job.column_delimiter],
                lineterminator=_LINE_ENDINGS[job.line_ending],
                quoting=csv.QUOTE_ALL,
            )
            writer.writerow(job.header)
            writer.writerows(page)
        headers = {"Sforce-Locator": next_locator, "Sforce-NumberOfRecords": str(len(page))}
        return _Resp(200, buf.getvalue().encode(), "text/csv", headers)


def _csv_header_cell(name: str) -> str:
    return f'"{name}"' if any(c in name for c in ',"\n\r') else name


def _csv_value(field_type: str, value: Any) -> str:
    """Render a stored value the way Bulk 2.0 query results do."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if field_type == "datetime":
        return str(value).replace("+0000", "Z")
    return str(value)
