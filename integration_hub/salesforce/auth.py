"""Reaching a Salesforce org: login hosts, HTTP sessions, tokens, OAuth 2.0 and JWT bearer.

* The login host is the connection's `login_url` (My Domain, or the test fake) when set, else
  https://test.salesforce.com for a sandbox and https://login.salesforce.com for production.
* `auth: oauth`: `integration-hub salesforce connect` runs the authorization-code flow with PKCE
  through a local callback (http://localhost:<callback_port>/OauthRedirect) and keeps the refresh
  token encrypted at rest (Fernet, key from $INTEGRATION_HUB_SECRET_KEY) in
  `<warehouse dir>/salesforce_tokens/<connection>.enc` (mode 0600); each run trades it for a
  short-lived access token. `disconnect` revokes it at Salesforce and deletes the file.
* `auth: jwt`: each run signs a JWT with the connected app's private key (headless servers).

No token, secret or authorization code is ever printed, logged or put into an exception message.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import secrets
import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..core.catalog import Catalog, SalesforceConnection

SECRET_KEY_ENV = "INTEGRATION_HUB_SECRET_KEY"
LOGIN_HOSTS = {"production": "https://login.salesforce.com", "sandbox": "https://test.salesforce.com"}
SCOPES = "api refresh_token"
CALLBACK_PATH = "/OauthRedirect"
JWT_LIFETIME_SECONDS = 180
GENERATE_KEY_HINT = (
    'generate one with `python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())"` and keep it in your secret manager'
)
# Salesforce access tokens look like "00D...!AQ..."; refresh tokens like "5Aep861...".
_TOKEN_PATTERN = re.compile(r"00D[A-Za-z0-9]{12,15}![A-Za-z0-9._\-]+|5Aep861[A-Za-z0-9._\-]{20,}")


class SalesforceAuthError(Exception):
    """Logging in failed; the message says why and how to fix it (and holds no secret)."""


def redact(text: str) -> str:
    """Remove anything that looks like a Salesforce token from a message."""
    return _TOKEN_PATTERN.sub("[redacted]", text)


# ---------------------------------------------------------------------------- hosts, sessions


def login_host(connection: SalesforceConnection) -> str:
    """Where OAuth happens: `login_url` if set, else test.salesforce.com (sandbox) / login.salesforce.com."""
    return (connection.login_url or LOGIN_HOSTS[connection.environment]).rstrip("/")


def jwt_audience(connection: SalesforceConnection) -> str:
    """The JWT `aud` claim: Salesforce wants the generic login host of the environment."""
    return LOGIN_HOSTS[connection.environment]


class SalesforceSession(requests.Session):
    """A requests session with a default (connect, read) timeout on every call and an explicit CA bundle.

    simple-salesforce sets no timeout at all, so a hung connection would hang a run forever.
    `verify` is passed per request when a CA bundle is configured, because requests lets
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's own `verify`. urllib3 retries
    nothing: the client's call loop and the OAuth requests retry with backoff themselves, and
    retrying at both levels would multiply how long an unreachable org takes to fail.
    """

    def __init__(self, timeout: float | tuple[float, float], ca_bundle: str | None = None, connect_retries: int = 0) -> None:
        super().__init__()
        self.default_timeout = timeout
        self.ca_bundle = ca_bundle
        retry = Retry(total=connect_retries, connect=connect_retries, read=0, status=0, other=0,
                      backoff_factor=0.5, raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=8)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        if self.ca_bundle and kwargs.get("verify") in (None, True):
            kwargs["verify"] = self.ca_bundle
        return super().request(method, url, *args, **kwargs)


def ca_bundle_path(catalog: Catalog, connection: SalesforceConnection) -> str | None:
    if not connection.ca_bundle:
        return None
    path = catalog.resolve_path(connection.ca_bundle)
    if not path.is_file():
        raise SalesforceAuthError(
            f"connection {connection.name!r} field 'ca_bundle': {path} does not exist; "
            "point it at a PEM file of trusted CAs, or remove it to use the system's"
        )
    return str(path)


def build_session(catalog: Catalog, connection: SalesforceConnection) -> SalesforceSession:
    timeout = (min(connection.connect_timeout_seconds, connection.timeout_seconds), connection.timeout_seconds)
    return SalesforceSession(timeout, ca_bundle_path(catalog, connection))


# ---------------------------------------------------------------------------- token store


def fernet():
    """The Fernet cipher from $INTEGRATION_HUB_SECRET_KEY (a clear error when unset or malformed)."""
    from cryptography.fernet import Fernet

    key = os.environ.get(SECRET_KEY_ENV, "").strip()
    if not key:
        raise SalesforceAuthError(
            f"${SECRET_KEY_ENV} is not set: Salesforce tokens are stored encrypted with it; {GENERATE_KEY_HINT}"
        )
    try:
        return Fernet(key.encode())
    except (ValueError, TypeError):
        raise SalesforceAuthError(
            f"${SECRET_KEY_ENV} is not a valid Fernet key (32 url-safe base64-encoded bytes); {GENERATE_KEY_HINT}"
        ) from None


def decrypt_credentials(encrypted: bytes, connection_name: str, where: str) -> dict[str, Any]:
    """A stored token's fields; a clear error when the current key cannot decrypt it."""
    from cryptography.fernet import InvalidToken

    try:
        return json.loads(fernet().decrypt(encrypted).decode("utf-8"))
    except (InvalidToken, ValueError):
        raise SalesforceAuthError(
            f"the stored token of connection {connection_name!r} ({where}) cannot be decrypted with the "
            f"current ${SECRET_KEY_ENV} (was the key changed?): run "
            f"`integration-hub salesforce connect {connection_name}` again"
        ) from None


class TokenStore:
    """Refresh tokens, one encrypted file per connection, readable by this user only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, connection_name: str) -> Path:
        return self.directory / f"{connection_name}.enc"

    def save(self, connection_name: str, data: dict[str, Any]) -> Path:
        token = fernet().encrypt(json.dumps(data).encode("utf-8"))
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        target = self.path(connection_name)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(token)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def load(self, connection_name: str) -> dict[str, Any] | None:
        path = self.path(connection_name)
        if not path.exists():
            return None
        return decrypt_credentials(path.read_bytes(), connection_name, str(path))

    def delete(self, connection_name: str) -> bool:
        path = self.path(connection_name)
        if path.exists():
            path.unlink()
            return True
        return False


_CREDENTIALS_DDL = """
CREATE TABLE IF NOT EXISTS salesforce_credentials (
    connection TEXT PRIMARY KEY,
    encrypted BYTEA NOT NULL,
    saved_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""


class DatabaseTokenStore:
    """Refresh tokens, encrypted as in the file store, in the PostgreSQL catalog database (scale-out),
    so that a run on any machine can sign in. Same methods as TokenStore; `path` names the row."""

    def __init__(self, dsn: str, shown: str) -> None:
        self._dsn, self._shown = dsn, shown

    def path(self, connection_name: str) -> str:
        return f"{self._shown} (integration_hub.salesforce_credentials, {connection_name})"

    def _query(self, sql: str, params: list[Any]) -> Any:
        from ..core.catalog_database import connect_hub_schema
        from ..core.warehouse import LakeError

        try:
            con = connect_hub_schema(self._dsn, self._shown, "salesforce credentials", _CREDENTIALS_DDL)
        except LakeError as exc:
            raise SalesforceAuthError(str(exc)) from None
        try:
            with con.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchone() if cursor.description else cursor.rowcount
        finally:
            con.close()

    def save(self, connection_name: str, data: dict[str, Any]) -> str:
        token = fernet().encrypt(json.dumps(data).encode("utf-8"))
        self._query(
            "INSERT INTO salesforce_credentials (connection, encrypted) VALUES (%s, %s) ON CONFLICT (connection) "
            "DO UPDATE SET encrypted = excluded.encrypted, saved_at = now()",
            [connection_name, token],
        )
        return self.path(connection_name)

    def load(self, connection_name: str) -> dict[str, Any] | None:
        row = self._query("SELECT encrypted FROM salesforce_credentials WHERE connection = %s", [connection_name])
        return None if row is None else decrypt_credentials(bytes(row[0]), connection_name, self.path(connection_name))

    def delete(self, connection_name: str) -> bool:
        return bool(self._query("DELETE FROM salesforce_credentials WHERE connection = %s", [connection_name]))


def token_store(catalog: Catalog) -> TokenStore | DatabaseTokenStore:
    """Beside the warehouse (never in DuckDB, never in the repository): a folder beside a SQLite
    catalog, or the PostgreSQL catalog database, which every machine reaches."""
    if catalog.warehouse.on_postgres:
        from ..core.warehouse import postgres_dsn

        return DatabaseTokenStore(postgres_dsn(catalog.warehouse.catalog), catalog.warehouse_shown)
    return TokenStore(catalog.state_dir / "salesforce_tokens")


# ---------------------------------------------------------------------------- token endpoint


@dataclass
class Login:
    """A live API session: where to call and with what (never printed)."""

    access_token: str
    instance_url: str
    username: str | None = None
    rotated_refresh_token: str | None = None

    def __repr__(self) -> str:  # keep the token out of reprs, logs and tracebacks
        return f"Login(instance_url={self.instance_url!r}, username={self.username!r})"


def _oauth_failure(response: requests.Response, what: str, fix: str) -> SalesforceAuthError:
    try:
        body = response.json()
        reason = f"{body.get('error')}: {body.get('error_description')}"
    except ValueError:
        reason = f"HTTP {response.status_code}"
    return SalesforceAuthError(redact(f"Salesforce refused the {what} ({reason}): {fix}"))


def _post_form(session: requests.Session, url: str, form: dict[str, str], what: str, attempts: int = 3) -> requests.Response:
    """POST to an OAuth endpoint, retrying timeouts and 5xx a few times."""
    for attempt in range(attempts):
        try:
            response = session.post(url, data=form, headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            if attempt + 1 >= attempts:
                raise SalesforceAuthError(
                    f"cannot reach {urlsplit(url).netloc} for the {what} ({type(exc).__name__}): check the "
                    "network, the connection's login_url/environment and ca_bundle"
                ) from None
        else:
            if response.status_code < 500 or attempt + 1 >= attempts:
                return response
        time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _tokens_from(response: requests.Response, what: str, fix: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise _oauth_failure(response, what, fix)
    try:
        tokens = response.json()
    except ValueError:
        raise SalesforceAuthError(f"the {what} answered with something that is not JSON: {fix}") from None
    if not tokens.get("access_token") or not tokens.get("instance_url"):
        raise SalesforceAuthError(f"the {what} answered without an access token or instance_url: {fix}")
    return tokens


def refresh_login(connection: SalesforceConnection, session: requests.Session, stored: dict[str, Any]) -> Login:
    """Trade the stored refresh token for an access token."""
    form = {"grant_type": "refresh_token", "refresh_token": stored["refresh_token"],
            "client_id": stored.get("client_id") or connection.client_id or ""}
    if connection.client_secret is not None:
        form["client_secret"] = connection.client_secret.get_secret_value()
    reconnect = f"run `integration-hub salesforce connect {connection.name}` again"
    response = _post_form(session, f"{login_host(connection)}/services/oauth2/token", form, "refresh-token login")
    tokens = _tokens_from(
        response, "refresh-token login",
        f"the token may have been revoked or expired, or client_id/client_secret changed; {reconnect}",
    )
    login = Login(tokens["access_token"], tokens["instance_url"], stored.get("username"))
    rotated = tokens.get("refresh_token")
    if rotated and rotated != stored["refresh_token"]:
        login.rotated_refresh_token = rotated  # orgs with refresh-token rotation: keep the new one
    return login


def read_private_key(catalog: Catalog, connection: SalesforceConnection) -> str:
    if not connection.private_key_file:
        raise SalesforceAuthError(
            f"connection {connection.name!r} uses auth: jwt but has no private_key_file: set it to the PEM "
            "private key whose certificate is uploaded to the connected app"
        )
    path = catalog.resolve_path(connection.private_key_file)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SalesforceAuthError(
            f"connection {connection.name!r}: cannot read private_key_file {path} ({exc.strerror}); fix the path"
        ) from None


def jwt_login(catalog: Catalog, connection: SalesforceConnection, session: requests.Session) -> Login:
    """OAuth 2.0 JWT bearer flow: a signed assertion for `username`, no stored token."""
    import jwt

    missing = [n for n in ("client_id", "username") if not getattr(connection, n)]
    if missing:
        raise SalesforceAuthError(
            f"connection {connection.name!r} uses auth: jwt but has no {' and no '.join(missing)}: set client_id "
            "to the connected app's consumer key and username to the Salesforce user the server acts as"
        )
    claims = {"iss": connection.client_id, "sub": connection.username, "aud": jwt_audience(connection),
              "exp": int(time.time()) + JWT_LIFETIME_SECONDS}
    try:
        assertion = jwt.encode(claims, read_private_key(catalog, connection), algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError):
        raise SalesforceAuthError(
            f"connection {connection.name!r}: private_key_file is not a usable RSA private key (PEM)"
        ) from None
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    response = _post_form(session, f"{login_host(connection)}/services/oauth2/token", form, "JWT bearer login")
    tokens = _tokens_from(
        response, "JWT bearer login",
        "check client_id (the consumer key), that the certificate of private_key_file is uploaded to the "
        "connected app, that the user is pre-authorized for it, and environment/login_url",
    )
    return Login(tokens["access_token"], tokens["instance_url"], connection.username)


def authenticate(catalog: Catalog, connection: SalesforceConnection, session: requests.Session) -> Login:
    """A fresh access token for a connection, by JWT or from the stored refresh token."""
    if connection.auth == "jwt":
        return jwt_login(catalog, connection, session)
    stored = token_store(catalog).load(connection.name)
    if stored is None:
        raise SalesforceAuthError(
            f"connection {connection.name!r} is not connected to Salesforce yet: run "
            f"`integration-hub salesforce connect {connection.name}`"
        )
    login = refresh_login(connection, session, stored)
    if login.rotated_refresh_token:
        token_store(catalog).save(connection.name, {**stored, "refresh_token": login.rotated_refresh_token})
        login.rotated_refresh_token = None
    return login


# ---------------------------------------------------------------------------- connect (code + PKCE)


@dataclass
class ConnectResult:
    instance_url: str
    username: str | None
    token_file: Path | str  # where the token is kept: a file, or a row of the catalog database


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def redirect_uri(connection: SalesforceConnection) -> str:
    return f"http://localhost:{connection.callback_port}{CALLBACK_PATH}"


def authorize_url(connection: SalesforceConnection, state: str, challenge: str) -> str:
    query = {
        "response_type": "code",
        "client_id": connection.client_id or "",
        "redirect_uri": redirect_uri(connection),
        "scope": SCOPES,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return f"{login_host(connection)}/services/oauth2/authorize?{urlencode(query)}"


class _Callback:
    """What the local callback server received."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.code: str | None = None
        self.error: str | None = None
        self.done = threading.Event()


def _callback_handler(callback: _Callback) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # the query holds the code: never log it
            return

        def _page(self, status: int, message: str) -> None:
            body = (f"<!doctype html><title>integration-hub</title><p>{html.escape(message)}</p>").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = urlsplit(self.path)
            if parts.path != CALLBACK_PATH:
                self._page(404, "not found")
                return
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if not secrets.compare_digest(query.get("state", ""), callback.state):
                self._page(400, "This answer does not belong to the running `integration-hub salesforce connect`.")
                return
            if "error" in query:
                callback.error = f"{query['error']}: {query.get('error_description', '')}".strip(": ")
                self._page(400, f"Salesforce did not grant access ({callback.error}). You can close this tab.")
            elif query.get("code"):
                callback.code = query["code"]
                self._page(200, "integration-hub is connected to Salesforce. You can close this tab.")
            else:
                self._page(400, "No authorization code in the answer.")
                return
            callback.done.set()

    return Handler


def connect_oauth(
    catalog: Catalog,
    connection: SalesforceConnection,
    *,
    on_url: Callable[[str], None] = print,
    open_browser: bool = True,
    timeout: float = 300.0,
    session: requests.Session | None = None,
) -> ConnectResult:
    """The authorization-code flow with PKCE through a local callback; stores the refresh token.

    `on_url` receives the URL to open (printed by the CLI; tests fetch it themselves). Blocks
    until Salesforce redirects to the callback or `timeout` seconds pass.
    """
    if connection.auth != "oauth":
        raise SalesforceAuthError(
            f"connection {connection.name!r} uses auth: {connection.auth}: there is no token to connect; "
            "runs sign in with the private key (try `integration-hub check`)"
        )
    if not connection.client_id:
        raise SalesforceAuthError(
            f"connection {connection.name!r} has no client_id: set it to the connected app's consumer key "
            "(docs/salesforce.md 'Connecting an org')"
        )
    store = token_store(catalog)
    fernet()  # fail before the browser dance when the key is missing
    session = session or build_session(catalog, connection)
    verifier, challenge = pkce_pair()
    callback = _Callback(secrets.token_urlsafe(24))
    try:
        server = HTTPServer(("127.0.0.1", connection.callback_port), _callback_handler(callback))
    except OSError as exc:
        raise SalesforceAuthError(
            f"cannot listen on 127.0.0.1:{connection.callback_port} for the OAuth callback ({exc.strerror}): "
            "free that port or set callback_port on the connection (and in the connected app's callback URL)"
        ) from None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="salesforce-oauth-callback", daemon=True)
    thread.start()
    try:
        url = authorize_url(connection, callback.state, challenge)
        on_url(url)
        if open_browser:
            try:
                webbrowser.open(url)
            except Exception:  # noqa: BLE001 - no browser here: the printed URL is enough
                pass
        if not callback.done.wait(timeout):
            raise SalesforceAuthError(
                f"no answer from Salesforce within {timeout:.0f} s: open the URL, log in and allow access "
                f"(the connected app's callback URL must be {redirect_uri(connection)})"
            )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    if callback.error or not callback.code:
        raise SalesforceAuthError(f"Salesforce did not grant access ({callback.error}); try again")
    form = {"grant_type": "authorization_code", "code": callback.code, "client_id": connection.client_id,
            "redirect_uri": redirect_uri(connection), "code_verifier": verifier}
    if connection.client_secret is not None:
        form["client_secret"] = connection.client_secret.get_secret_value()
    response = _post_form(session, f"{login_host(connection)}/services/oauth2/token", form, "authorization code", 1)
    tokens = _tokens_from(response, "authorization code",
                          "check client_id/client_secret and that the connected app's callback URL is "
                          f"{redirect_uri(connection)}; then connect again")
    if not tokens.get("refresh_token"):
        raise SalesforceAuthError(
            "Salesforce returned no refresh token: add the 'Perform requests at any time (refresh_token, "
            "offline_access)' scope to the connected app, then connect again"
        )
    instance_url = tokens["instance_url"]
    username = _username(session, tokens)
    path = store.save(connection.name, {
        "refresh_token": tokens["refresh_token"],
        "instance_url": instance_url,
        "client_id": connection.client_id,
        "login_host": login_host(connection),
        "username": username,
        "connected_at": datetime.now(timezone.utc).isoformat(),
    })
    return ConnectResult(instance_url, username, path)


def _username(session: requests.Session, tokens: dict[str, Any]) -> str | None:
    """Who we are connected as, for the confirmation line (best effort)."""
    try:
        response = session.get(f"{tokens['instance_url']}/services/oauth2/userinfo",
                               headers={"Authorization": f"Bearer {tokens['access_token']}"})
        if response.status_code == 200:
            return response.json().get("preferred_username") or response.json().get("username")
    except (requests.RequestException, ValueError):
        pass
    return None


# ---------------------------------------------------------------------------- disconnect


@dataclass
class DisconnectResult:
    had_token: bool
    revoked: bool  # False: Salesforce no longer knew the token (already revoked or expired)
    token_file: Path | str


def disconnect(
    catalog: Catalog, connection: SalesforceConnection, *, forget: bool = False, session: requests.Session | None = None
) -> DisconnectResult:
    """Revoke the stored refresh token at Salesforce, then delete it.

    If Salesforce cannot be reached the token is kept (so it can still be revoked), unless
    `forget` is true.
    """
    store = token_store(catalog)
    path = store.path(connection.name)
    stored = store.load(connection.name)
    if stored is None:
        return DisconnectResult(False, False, path)
    session = session or build_session(catalog, connection)
    host = (stored.get("login_host") or login_host(connection)).rstrip("/")
    revoked = False
    keep_hint = ("the token is kept: try again, or pass --forget to delete it here anyway (then revoke it in "
                 "Salesforce under Setup > Connected Apps OAuth Usage)")
    try:
        response = _post_form(session, f"{host}/services/oauth2/revoke", {"token": stored["refresh_token"]}, "revocation")
    except SalesforceAuthError as exc:
        if not forget:
            raise SalesforceAuthError(f"{exc}; {keep_hint}") from None
        response = None
    if response is not None:
        if response.status_code == 200:
            revoked = True
        elif response.status_code >= 500 and not forget:
            raise SalesforceAuthError(f"Salesforce could not revoke the token (HTTP {response.status_code}); {keep_hint}")
        # 400 (unsupported_token_type / invalid_token): Salesforce no longer knows it, so it is dead already.
    store.delete(connection.name)
    return DisconnectResult(True, revoked, path)
