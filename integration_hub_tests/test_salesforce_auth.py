"""Connecting to Salesforce: login hosts, OAuth code flow + PKCE (connect/disconnect), JWT bearer, token storage."""

from __future__ import annotations

import json
import queue
import re
import socket
import stat
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from requests.adapters import HTTPAdapter

from integration_hub.cli.main import main
from integration_hub.core.catalog import SalesforceConnection, parse_catalog
from integration_hub.salesforce import auth
from integration_hub.salesforce.auth import (
    SalesforceAuthError,
    SalesforceSession,
    connect_oauth,
    jwt_audience,
    login_host,
    token_store,
)
from integration_hub.salesforce.client import SalesforceClient, describe_failure
from integration_hub_tests.fakes.salesforce import FakeSalesforce
from integration_hub_tests.test_salesforce_support import (
    CLIENT_ID,
    connect,
    contacts,
    last_sync,
    row,
    run_sync_job,
    seed,
    write_catalog,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("salesforce_environment")]
TOKEN_SHAPES = re.compile(r"00D[A-Za-z0-9]{12,15}!|5Aep861")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connection(**fields: Any) -> SalesforceConnection:
    catalog = parse_catalog({"connections": [{"name": "sf", "type": "salesforce", **fields}]})
    return catalog.connection("sf")  # type: ignore[return-value]


# ---------------------------------------------------------------------------- hosts


def test_login_host_for_sandbox_production_and_my_domain() -> None:
    assert login_host(_connection(environment="sandbox")) == "https://test.salesforce.com"
    assert login_host(_connection(environment="production")) == "https://login.salesforce.com"
    assert login_host(_connection()) == "https://login.salesforce.com"  # production is the default
    my_domain = _connection(environment="sandbox", login_url="https://acme--uat.sandbox.my.salesforce.com/")
    assert login_host(my_domain) == "https://acme--uat.sandbox.my.salesforce.com"
    assert jwt_audience(my_domain) == "https://test.salesforce.com"
    assert jwt_audience(_connection(environment="production")) == "https://login.salesforce.com"


class _Recorder(HTTPAdapter):
    """Sends login.salesforce.com / test.salesforce.com to the fake, remembering which host was asked."""

    def __init__(self, fake: FakeSalesforce, hosts: list[str]) -> None:
        super().__init__()
        self.fake, self.hosts = fake, hosts

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        self.hosts.append(f"{parts.scheme}://{parts.netloc}{parts.path}")
        request.url = self.fake.url + parts.path + (f"?{parts.query}" if parts.query else "")
        return super().send(request, *args, **kwargs)


@pytest.mark.parametrize("environment", ["sandbox", "production"])
def test_real_login_goes_to_the_environments_host(environment: str, fake: FakeSalesforce, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path, fake, connection={"environment": environment, "login_url": None})
    connect(catalog, fake)
    hosts: list[str] = []
    session = SalesforceSession(10, fake.ca_file)
    for host in auth.LOGIN_HOSTS.values():
        session.mount(host, _Recorder(fake, hosts))
    client = SalesforceClient(catalog, catalog.connection("sf"), session=session)  # type: ignore[arg-type]
    assert client.describe("Contact")["name"] == "Contact"
    expected = {"sandbox": "https://test.salesforce.com", "production": "https://login.salesforce.com"}[environment]
    assert hosts == [f"{expected}/services/oauth2/token"]
    assert client.instance_url == fake.url  # API calls go to the instance_url Salesforce answered with


# ---------------------------------------------------------------------------- OAuth code flow


def _oauth_catalog(tmp_path: Path, fake: FakeSalesforce, monkeypatch: pytest.MonkeyPatch) -> Any:
    port = _free_port()
    fake.register_oauth_client(CLIENT_ID, "s3cret", redirect_uris=[f"http://localhost:{port}/OauthRedirect"])
    monkeypatch.setenv("SF_CLIENT_SECRET", "s3cret")
    return write_catalog(tmp_path, fake, connection={"callback_port": port, "client_secret": "${SF_CLIENT_SECRET}"})


def _approve(fake: FakeSalesforce) -> Any:
    """What the user's browser does: open the authorize URL; the fake approves and redirects to the callback."""

    def open_url(url: str) -> bool:
        response = fake.session().get(url, timeout=10)  # follows the redirect to http://localhost:<port>/...
        assert response.status_code == 200, response.text
        return True

    return open_url


def test_connect_and_disconnect_through_the_command_line(
    fake: FakeSalesforce, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = _oauth_catalog(tmp_path, fake, monkeypatch)
    monkeypatch.setattr(auth.webbrowser, "open", _approve(fake))
    path = str(tmp_path / "integrations.yaml")

    assert main(["salesforce", "connect", "sf", "--catalog", path]) == 0
    out = capsys.readouterr().out
    assert f"{fake.url}/services/oauth2/authorize?" in out
    assert f"connected sf to {fake.url} as {fake.username}" in out
    assert not TOKEN_SHAPES.search(out)
    request = fake.authorization_requests[-1]
    assert request["code_challenge_method"] == "S256" and len(request["code_challenge"]) == 43
    assert request["scope"] == "api refresh_token"

    # Stored encrypted, beside the warehouse, readable by this user only.
    token_file = token_store(catalog).path("sf")
    assert token_file.parent == catalog.state_dir / "salesforce_tokens"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    raw = token_file.read_bytes()
    stored = json.loads(auth.fernet().decrypt(raw))
    refresh = stored["refresh_token"]
    assert fake.is_token_valid(refresh) and refresh.encode() not in raw and b"refresh" not in raw

    # A run logs in with it.
    contacts(fake, ["a@example.com"])
    seed(catalog, [row("a@example.com")])
    assert run_sync_job(catalog).success and last_sync(catalog)["updated"] == 1

    assert main(["salesforce", "disconnect", "sf", "--catalog", path]) == 0
    out = capsys.readouterr().out
    assert "revoked at Salesforce and deleted" in out and not TOKEN_SHAPES.search(out)
    assert not fake.is_token_valid(refresh) and not token_file.exists()
    assert fake.calls_by_kind()["revoke"] == 1

    result = run_sync_job(catalog)
    assert not result.success
    assert "is not connected to Salesforce yet: run `integration-hub salesforce connect sf`" in last_sync(catalog)["message"]
    assert main(["salesforce", "disconnect", "sf", "--catalog", path]) == 0
    assert "is not connected" in capsys.readouterr().out


def test_connect_can_be_driven_from_a_thread(fake: FakeSalesforce, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = _oauth_catalog(tmp_path, fake, monkeypatch)
    urls: queue.Queue[str] = queue.Queue()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = connect_oauth(catalog, catalog.connection("sf"), on_url=urls.put, open_browser=False,
                                              timeout=20)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    url = urls.get(timeout=10)
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    # A forged answer with the wrong state is refused and the flow keeps waiting.
    callback = query["redirect_uri"]
    assert callback == f"http://localhost:{urlsplit(callback).port}/OauthRedirect"
    forged = requests.get(callback, params={"code": "stolen", "state": "wrong"}, timeout=10)
    assert forged.status_code == 400
    _approve(fake)(url)
    thread.join(timeout=20)
    assert "error" not in outcome, outcome
    assert outcome["result"].instance_url == fake.url and token_store(catalog).load("sf") is not None


def test_connect_needs_the_secret_key(
    fake: FakeSalesforce, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = _oauth_catalog(tmp_path, fake, monkeypatch)
    monkeypatch.delenv("INTEGRATION_HUB_SECRET_KEY")
    assert main(["salesforce", "connect", "sf", "--no-browser", "--catalog", str(tmp_path / "integrations.yaml")]) == 1
    err = capsys.readouterr().err
    assert "$INTEGRATION_HUB_SECRET_KEY is not set" in err and "Fernet.generate_key()" in err
    assert not fake.authorization_requests

    monkeypatch.setenv("INTEGRATION_HUB_SECRET_KEY", Fernet.generate_key().decode())
    connect(catalog, fake)
    monkeypatch.setenv("INTEGRATION_HUB_SECRET_KEY", Fernet.generate_key().decode())  # a different key
    with pytest.raises(SalesforceAuthError, match="cannot be decrypted with the current"):
        token_store(catalog).load("sf")


def test_expired_session_logs_in_again(fake: FakeSalesforce, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path, fake)
    connect(catalog, fake)
    client = SalesforceClient(catalog, catalog.connection("sf"))  # type: ignore[arg-type]
    fake.expire_access_tokens()
    assert client.describe("Contact")["name"] == "Contact"
    assert client.calls["login"] == 2


def test_error_messages_never_carry_tokens() -> None:
    from simple_salesforce.exceptions import SalesforceGeneralError

    leaked = "00D000000000001!AQ4AQFakeAccessTokenValue.abc 5Aep861FakeRefreshTokenValueThatIsLong"
    message, status, code, retryable = describe_failure(
        SalesforceGeneralError("https://x/services/data?q=secret", 500, "query",
                               [{"errorCode": "UNKNOWN_EXCEPTION", "message": leaked}]))
    assert (status, code, retryable) == (500, "UNKNOWN_EXCEPTION", True)
    assert "https://x" not in message
    assert not TOKEN_SHAPES.search(auth.redact(message))
    from integration_hub.salesforce.client import SalesforceApiError

    assert not TOKEN_SHAPES.search(str(SalesforceApiError(message)))
    assert "access_token" not in repr(auth.Login("00D000000000001!AQ4secret", "https://x"))


# ---------------------------------------------------------------------------- JWT bearer


def test_jwt_bearer_for_headless_servers(fake: FakeSalesforce, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "server.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fake.register_jwt_client(CLIENT_ID, public, usernames=["svc@example.com"])
    catalog = write_catalog(tmp_path, fake, connection={"auth": "jwt", "username": "svc@example.com",
                                                        "private_key_file": "server.key"})
    ids = contacts(fake, ["a@example.com"])
    seed(catalog, [row("a@example.com", nps=7)])
    assert run_sync_job(catalog).success
    assert fake.get("Contact", ids[0])["WalkMe_NPS__c"] == 7
    assert fake.calls_by_kind()["token"] == 1
    assert not (catalog.state_dir / "salesforce_tokens").exists()  # nothing stored

    path = str(tmp_path / "integrations.yaml")
    assert main(["salesforce", "connect", "sf", "--catalog", path]) == 0
    assert "uses the JWT bearer flow: logged in" in capsys.readouterr().out

    other = write_catalog(tmp_path, fake, connection={"auth": "jwt", "username": "someone@example.com",
                                                      "private_key_file": "server.key"})
    result = run_sync_job(other)
    assert not result.success
    message = last_sync(other)["message"]
    assert "Salesforce refused the JWT bearer login (invalid_grant: user hasn't approved this consumer)" in message


def test_a_rotated_refresh_token_replaces_the_stored_one(
    fake: FakeSalesforce, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = write_catalog(tmp_path, fake)
    original = connect(catalog, fake)
    rotated = fake.issue_refresh_token(client_id=CLIENT_ID)
    tokens_from = auth._tokens_from

    def with_rotation(*args: Any, **kwargs: Any) -> dict[str, Any]:  # an org with refresh-token rotation on
        return {**tokens_from(*args, **kwargs), "refresh_token": rotated}

    monkeypatch.setattr(auth, "_tokens_from", with_rotation)
    client = SalesforceClient(catalog, catalog.connection("sf"))  # type: ignore[arg-type]
    assert client.describe("Contact")["name"] == "Contact"
    stored = token_store(catalog).load("sf")
    assert stored is not None and stored["refresh_token"] == rotated != original
    assert stored["instance_url"] == fake.url
