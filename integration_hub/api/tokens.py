"""Bearer and integration tokens of the End User Update API, in a small database.

The embedded default is a SQLite file in the landing folder. With a PostgreSQL warehouse catalog
(scale-out) the tokens live in that database, schema `integration_hub`, so that every API replica
and every machine's command line sees the same tokens.

- A bearer token (`ihb_...`) is the organisation's credential: `Authorization: Bearer`.
- An integration token (`ihi_...`) picks the API integration a request writes to.

A token is shown once, when it is issued; the database holds only its sha256 (hex). A
request's token is hashed, looked up by hash and compared with `hmac.compare_digest`.
Every lookup reads the database, so revoking or rotating takes effect at once, also in a
running server. Neither tokens nor hashes are ever logged or returned after creation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.catalog import Catalog

BEARER_PREFIX = "ihb_"
INTEGRATION_PREFIX = "ihi_"
TOKENS_FILE = "tokens.sqlite3"
MAX_TOKEN_CHARS = 128

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bearer_tokens (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS integration_tokens (
    integration TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
"""


class TokenError(Exception):
    """A token operation that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class BearerInfo:
    name: str
    created_at: str
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def generate(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_store(catalog: Catalog) -> TokenStore:
    """The catalog's token database: the landing folder's SQLite file, or the PostgreSQL catalog's."""
    if catalog.warehouse.on_postgres:
        from ..core.warehouse import postgres_dsn

        return TokenStore(postgres_dsn=postgres_dsn(catalog.warehouse.catalog), shown=catalog.warehouse_shown)
    return TokenStore(catalog.landing_path)


class TokenStore:
    """The token database: `<landing>/tokens.sqlite3`, or (`postgres_dsn`) a PostgreSQL database."""

    def __init__(self, landing: Path | None = None, *, postgres_dsn: str | None = None, shown: str = "") -> None:
        self.path = Path(landing) / TOKENS_FILE if landing is not None else None
        self._postgres_dsn = postgres_dsn
        self.shown = shown or str(self.path)
        self._lock = threading.Lock()
        self._con: Any = None
        self._in_transaction = False

    def _connection(self) -> Any:
        if self._con is None:
            self._con = self._open_postgres() if self._postgres_dsn else self._open_sqlite()
        return self._con

    def _open_sqlite(self) -> sqlite3.Connection:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        con = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.executescript(_SCHEMA)
        return con

    def _open_postgres(self) -> Any:
        from ..core.catalog_database import connect_hub_schema
        from ..core.warehouse import LakeError

        assert self._postgres_dsn is not None
        try:
            return connect_hub_schema(self._postgres_dsn, self.shown, "tokens", _SCHEMA)
        except LakeError as exc:
            raise TokenError(str(exc)) from None

    def _execute(self, sql: str, params: list[Any] | None = None) -> Any:
        """Run one statement (under self._lock). A lost PostgreSQL connection is opened again once,
        for a statement that is safe to repeat: one outside a transaction that only reads."""
        if not self._postgres_dsn:
            return self._connection().execute(sql, params or [])
        import psycopg2

        sql = sql.replace("?", "%s")
        begins = sql == "BEGIN IMMEDIATE"
        repeatable = begins or (sql.startswith("SELECT") and not self._in_transaction)
        for attempt in (1, 2):
            try:
                cursor = self._connection().cursor()
                if begins:  # writers take turns, as SQLite's BEGIN IMMEDIATE makes them
                    cursor.execute("BEGIN")
                    cursor.execute("SELECT pg_advisory_xact_lock(hashtext('integration_hub'), hashtext('tokens'))")
                else:
                    cursor.execute(sql, params or [])
                self._in_transaction = begins or (self._in_transaction and sql not in ("COMMIT", "ROLLBACK"))
                return cursor
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self._drop_connection()
                if attempt == 2 or not repeatable:
                    raise
        raise AssertionError("unreachable")

    def _drop_connection(self) -> None:
        if self._con is not None:
            try:
                self._con.close()
            except Exception:  # noqa: BLE001 - it is broken already
                pass
            self._con = None
        self._in_transaction = False

    def close(self) -> None:
        with self._lock:
            self._drop_connection()

    def __enter__(self) -> TokenStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bearer tokens --------------------------------------------------------------
    def create_bearer(self, name: str) -> str:
        """Issue a bearer token named `name`; the token is returned once and stored hashed."""
        name = name.strip()
        if not name or len(name) > 100:
            raise TokenError("a token name must be 1 to 100 characters")
        token = generate(BEARER_PREFIX)
        with self._lock:
            self._execute("BEGIN IMMEDIATE")
            try:
                row = self._execute("SELECT revoked_at FROM bearer_tokens WHERE name = ?", [name]).fetchone()
                if row is not None and row[0] is None:
                    raise TokenError(
                        f"a token named {name!r} already exists: revoke it first "
                        f"(integration-hub tokens revoke {name}) or choose another name"
                    )
                self._execute("DELETE FROM bearer_tokens WHERE name = ?", [name])
                self._execute(
                    "INSERT INTO bearer_tokens (name, token_sha256, created_at) VALUES (?, ?, ?)",
                    [name, _sha256(token), _now()],
                )
                self._execute("COMMIT")
            except BaseException:
                self._execute("ROLLBACK")
                raise
        return token

    def list_bearers(self) -> list[BearerInfo]:
        with self._lock:
            rows = self._execute("SELECT name, created_at, revoked_at FROM bearer_tokens ORDER BY name").fetchall()
        return [BearerInfo(*row) for row in rows]

    def revoke_bearer(self, name: str) -> None:
        with self._lock:
            cursor = self._execute(
                "UPDATE bearer_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                [_now(), name],
            )
        if cursor.rowcount == 0:
            raise TokenError(f"no active token named {name!r}: see integration-hub tokens list")

    def authenticate(self, token: str) -> str | None:
        """The name of the active bearer token `token`, else None."""
        return self._owner_of(token, BEARER_PREFIX, "SELECT name, token_sha256 FROM bearer_tokens "
                              "WHERE token_sha256 = ? AND revoked_at IS NULL")

    def _owner_of(self, token: object, prefix: str, query: str) -> str | None:
        """Look a token up by its hash (constant-time compared); `query` returns (owner, hash)."""
        if not isinstance(token, str) or not token.startswith(prefix) or len(token) > MAX_TOKEN_CHARS:
            return None
        digest = _sha256(token)
        with self._lock:
            row = self._execute(query, [digest]).fetchone()
        if row is None or not hmac.compare_digest(row[1], digest):
            return None
        return row[0]

    # -- integration tokens ---------------------------------------------------------
    def integration_token_issued(self, integration: str) -> str | None:
        """When the integration's token was issued (None if it has none)."""
        with self._lock:
            row = self._execute("SELECT created_at FROM integration_tokens WHERE integration = ?", [integration]).fetchone()
        return row[0] if row else None

    def issue_integration_token(self, integration: str) -> str:
        """Issue (or rotate) the integration token: the previous one stops working at once."""
        token = generate(INTEGRATION_PREFIX)
        with self._lock:
            self._execute(
                "INSERT INTO integration_tokens (integration, token_sha256, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (integration) DO UPDATE SET token_sha256 = excluded.token_sha256, "
                "created_at = excluded.created_at",
                [integration, _sha256(token), _now()],
            )
        return token

    def integration_for(self, token: str) -> str | None:
        """The integration an integration token belongs to, else None."""
        return self._owner_of(
            token, INTEGRATION_PREFIX, "SELECT integration, token_sha256 FROM integration_tokens WHERE token_sha256 = ?"
        )
