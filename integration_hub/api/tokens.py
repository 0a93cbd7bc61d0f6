"""Bearer and integration tokens of the End User Update API, in a small SQLite database.

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


class TokenStore:
    """The token database of a landing folder (`<landing>/tokens.sqlite3`)."""

    def __init__(self, landing: Path) -> None:
        self.path = Path(landing) / TOKENS_FILE
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            con = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.executescript(_SCHEMA)
            self._con = con
        return self._con

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

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
            con = self._connection()
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute("SELECT revoked_at FROM bearer_tokens WHERE name = ?", [name]).fetchone()
                if row is not None and row[0] is None:
                    raise TokenError(
                        f"a token named {name!r} already exists: revoke it first "
                        f"(integration-hub tokens revoke {name}) or choose another name"
                    )
                con.execute("DELETE FROM bearer_tokens WHERE name = ?", [name])
                con.execute(
                    "INSERT INTO bearer_tokens (name, token_sha256, created_at) VALUES (?, ?, ?)",
                    [name, _sha256(token), _now()],
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return token

    def list_bearers(self) -> list[BearerInfo]:
        with self._lock:
            rows = (
                self._connection()
                .execute("SELECT name, created_at, revoked_at FROM bearer_tokens ORDER BY name")
                .fetchall()
            )
        return [BearerInfo(*row) for row in rows]

    def revoke_bearer(self, name: str) -> None:
        with self._lock:
            cursor = self._connection().execute(
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
            row = self._connection().execute(query, [digest]).fetchone()
        if row is None or not hmac.compare_digest(row[1], digest):
            return None
        return row[0]

    # -- integration tokens ---------------------------------------------------------
    def integration_token_issued(self, integration: str) -> str | None:
        """When the integration's token was issued (None if it has none)."""
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT created_at FROM integration_tokens WHERE integration = ?", [integration])
                .fetchone()
            )
        return row[0] if row else None

    def issue_integration_token(self, integration: str) -> str:
        """Issue (or rotate) the integration token: the previous one stops working at once."""
        token = generate(INTEGRATION_PREFIX)
        with self._lock:
            self._connection().execute(
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
