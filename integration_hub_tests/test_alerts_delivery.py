"""Alert destinations for real: a webhook receiver and an SMTP server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration_hub.cli.main import main
from integration_hub.core.alerts import Alert, AlertSender, DeliveryError, Masker, deliver
from integration_hub.core.catalog import Catalog, parse_catalog
from integration_hub_tests.fakes.alert_receivers import (
    SmtpReceiver,
    WebhookReceiver,
    free_port,
    self_signed_certificate,
)

FAILED = Alert(
    "failed",
    "crm",
    "crm/users.csv: missing user id column 'email'",
    status="failed",
    run_id="0f1e2d3c-aaaa-bbbb-cccc-000000000000",
    rows_read=10,
    rows_applied=0,
    rows_rejected=0,
    url="http://127.0.0.1:3000/runs/0f1e2d3c-aaaa-bbbb-cccc-000000000000",
)


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, msg: str) -> None:
        self.lines.append(("info", msg))

    def warning(self, msg: str) -> None:
        self.lines.append(("warning", msg))

    def error(self, msg: str) -> None:
        self.lines.append(("error", msg))


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path)


def catalog_with(tmp_path: Path, *destinations: dict[str, Any]) -> Catalog:
    document = {
        "connections": [{"name": "drop", "type": "local", "path": "landing"}],
        "integrations": [
            {"name": "crm", "type": "s3_csv", "connection": "drop", "folder": "crm", "user_id_column": "email",
             "properties": [{"column": "plan", "name": "plan"}]}
        ],
        "alerts": {"destinations": list(destinations),
                   "rules": [{"when": ["failed"], "notify": [d["name"] for d in destinations]}]},
    }
    (tmp_path / "integrations.yaml").write_text(yaml.safe_dump(document))
    return parse_catalog(document, base_dir=tmp_path)


def webhook(name: str, url: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "url": url, "retry_backoff_seconds": 0.01, **fields}


# ---------------------------------------------------------------------------- webhooks


def test_slack_and_json_webhooks_receive_the_alert(tmp_path: Path, receiver: WebhookReceiver) -> None:
    catalog = catalog_with(
        tmp_path,
        webhook("slack", receiver.url("/slack"), format="slack"),
        webhook("generic", receiver.url("/json"), format="json", headers={"Authorization": "Bearer t0k3n"}),
    )
    results = AlertSender(catalog).send(FAILED, ["slack", "generic"], Log())
    assert [r.ok for r in results] == [True, True]
    slack, generic = receiver.requests
    assert slack.path == "/slack" and set(slack.json) == {"text"}
    text = slack.json["text"]
    assert text.startswith(":red_circle: *integration_hub: crm failed*")
    assert "*Rows:* 10 read, 0 applied, 0 rejected" in text
    assert "*Message:* crm/users.csv: missing user id column 'email'" in text
    assert text.endswith("<http://127.0.0.1:3000/runs/0f1e2d3c-aaaa-bbbb-cccc-000000000000|Open in Dagster>")
    assert generic.path == "/json" and generic.headers["Authorization"] == "Bearer t0k3n"
    body = generic.json
    assert body.pop("at").endswith("+00:00")
    assert body == {
        "source": "integration_hub",
        "event": "failed",
        "integration": "crm",
        "status": "failed",
        "run_id": "0f1e2d3c-aaaa-bbbb-cccc-000000000000",
        "rows_read": 10,
        "rows_applied": 0,
        "rows_rejected": 0,
        "check": None,
        "message": "crm/users.csv: missing user id column 'email'",
        "url": "http://127.0.0.1:3000/runs/0f1e2d3c-aaaa-bbbb-cccc-000000000000",
    }


def test_a_webhook_that_fails_twice_gets_the_alert_on_the_third_attempt(tmp_path: Path, receiver: WebhookReceiver) -> None:
    catalog = catalog_with(tmp_path, webhook("hook", receiver.url(), retry_backoff_seconds=0.05))
    receiver.statuses = [503, 502]
    waits: list[float] = []
    attempts = deliver(catalog, catalog.alerts.destination("hook"), FAILED, sleep=waits.append)
    assert attempts == 3 and len(receiver.requests) == 3
    assert waits == [0.05, 0.1]  # backoff doubles
    assert len({r.body for r in receiver.requests}) == 1  # the same alert each time


def test_retries_are_bounded_and_client_errors_are_not_retried(tmp_path: Path, receiver: WebhookReceiver) -> None:
    catalog = catalog_with(tmp_path, webhook("hook", receiver.url(), max_retries=2))
    receiver.statuses = [500] * 10
    with pytest.raises(DeliveryError, match=r"^HTTP 500 Internal Server Error: invalid_token \(after 3 attempts\)$"):
        deliver(catalog, catalog.alerts.destination("hook"), FAILED, sleep=lambda _: None)
    assert len(receiver.requests) == 3
    receiver.statuses = [404]
    with pytest.raises(DeliveryError, match="HTTP 404 Not Found: invalid_token: check the destination's url and headers$"):
        deliver(catalog, catalog.alerts.destination("hook"), FAILED, sleep=lambda _: None)
    assert len(receiver.requests) == 4


def test_a_dead_destination_is_logged_rested_and_does_not_stop_the_others(tmp_path: Path, receiver: WebhookReceiver) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    catalog = catalog_with(
        tmp_path, webhook("dead", dead_url, max_retries=1), webhook("live", receiver.url(), format="json")
    )
    sender, log = AlertSender(catalog, sleep=lambda _: None), Log()
    first = sender.send(FAILED, ["dead", "live"], log)
    assert [(d.destination, d.ok) for d in first] == [("dead", False), ("live", True)]
    assert first[0].error.startswith("cannot connect (") and first[0].error.endswith("(after 2 attempts)")
    assert ("error", f"alert 'integration_hub: crm failed' not sent to webhook dead (127.0.0.1): {first[0].error}") in log.lines
    # Within the rest period a dead destination costs nothing; the others still get everything.
    second = sender.send(FAILED, ["dead", "live"], log)
    assert [(d.destination, d.ok) for d in second] == [("dead", False), ("live", True)]
    assert log.lines[-2][0] == "warning" and "it failed moments ago" in log.lines[-2][1]
    assert len(receiver.requests) == 2


def test_secrets_are_masked_in_errors_and_messages(tmp_path: Path, receiver: WebhookReceiver, monkeypatch) -> None:
    secret_url = receiver.url("/services/T000/B000/s3cr3tT0k3n")
    monkeypatch.setenv("HOOK_URL", secret_url)
    monkeypatch.setenv("DB_PASSWORD", "hunter2-password")
    document = {
        "integrations": [],
        "alerts": {"destinations": [webhook("hook", "${HOOK_URL}", max_retries=0)],
                   "rules": [{"when": ["failed"], "notify": ["hook"]}]},
        "landing": "data/${DB_PASSWORD}",
    }
    catalog = parse_catalog(document, base_dir=tmp_path)
    assert catalog.env_variables == ("DB_PASSWORD", "HOOK_URL")
    masker = Masker(catalog.env_variables)
    assert masker(f"posted to {secret_url}; path /services/T000/B000/s3cr3tT0k3n") == "posted to ${HOOK_URL}; path ${HOOK_URL}"
    receiver.statuses = [404]
    receiver.error_body = "no hook at {path}"
    log = Log()
    leaky = Alert("failed", "crm", "cannot open data/hunter2-password/batch.json", status="failed")
    [result] = AlertSender(catalog).send(leaky, ["hook"], log)
    assert not result.ok
    assert receiver.requests[0].json["message"] == "cannot open data/${DB_PASSWORD}/batch.json"
    assert result.error == "HTTP 404 Not Found: no hook at ${HOOK_URL}: check the destination's url and headers"
    assert "s3cr3tT0k3n" not in json.dumps(log.lines) and "hunter2" not in json.dumps(log.lines)


# ---------------------------------------------------------------------------- email


def email(name: str, port: int, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "email", "host": "127.0.0.1", "port": port, "from": "hub@acme.com",
            "to": ["data@acme.com", "oncall@acme.com"], "retry_backoff_seconds": 0.01, "timeout_seconds": 5, **fields}


def test_email_over_required_starttls_with_login(tmp_path: Path, certificate, monkeypatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "correct horse")
    with SmtpReceiver(certificate=certificate, credentials=("hub@acme.com", "correct horse"), require_starttls=True) as smtp:
        catalog = catalog_with(tmp_path, email("oncall", smtp.port, starttls=True, user="hub@acme.com",
                                               password="${SMTP_PASSWORD}", ca_bundle=str(certificate[0])))
        assert deliver(catalog, catalog.alerts.destination("oncall"), FAILED) == 1
    [mail] = smtp.mails
    assert mail.tls and mail.login == "hub@acme.com"
    assert mail.sender == "hub@acme.com" and mail.recipients == ["data@acme.com", "oncall@acme.com"]
    assert mail.message["Subject"] == "integration_hub: crm failed"
    assert mail.message["To"] == "data@acme.com, oncall@acme.com"
    body = mail.message.get_payload(decode=True).decode().splitlines()
    assert body[0] == "integration_hub: crm failed"
    assert "Rows:        10 read, 0 applied, 0 rejected" in body  # labels aligned
    assert "Dagster run: 0f1e2d3c-aaaa-bbbb-cccc-000000000000" in body
    assert "Message:     crm/users.csv: missing user id column 'email'" in body
    assert body[-1] == "Open in Dagster: http://127.0.0.1:3000/runs/0f1e2d3c-aaaa-bbbb-cccc-000000000000"


def test_email_uses_starttls_when_offered_and_plain_smtp_otherwise(tmp_path: Path, certificate) -> None:
    with SmtpReceiver(certificate=certificate) as tls_server, SmtpReceiver() as plain_server:
        catalog = catalog_with(
            tmp_path,
            email("tls", tls_server.port, ca_bundle=str(certificate[0])),
            email("plain", plain_server.port),
        )
        deliver(catalog, catalog.alerts.destination("tls"), FAILED)
        deliver(catalog, catalog.alerts.destination("plain"), FAILED)
    assert [m.tls for m in tls_server.mails] == [True]
    assert [m.tls for m in plain_server.mails] == [False]


def test_email_refuses_what_is_unsafe_and_says_why(tmp_path: Path, certificate, monkeypatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "correct horse")
    with SmtpReceiver() as plain, SmtpReceiver(certificate=certificate, credentials=("hub@acme.com", "other")) as tls:
        catalog = catalog_with(
            tmp_path,
            email("required", plain.port, starttls=True),
            email("login_in_clear", plain.port, user="hub@acme.com", password="${SMTP_PASSWORD}"),
            email("untrusted", tls.port),
            email("wrong_password", tls.port, user="hub@acme.com", password="${SMTP_PASSWORD}",
                  ca_bundle=str(certificate[0])),
        )
        expected = {
            "required": f"127.0.0.1:{plain.port} does not offer STARTTLS, which starttls: true requires",
            "login_in_clear": f"127.0.0.1:{plain.port} offers no TLS, and the password is never sent in the clear",
            "untrusted": f"STARTTLS with 127.0.0.1:{tls.port} failed (",
            "wrong_password": f"127.0.0.1:{tls.port} refused the login of 'hub@acme.com' (535): check user and password",
        }
        for name, message in expected.items():
            with pytest.raises(DeliveryError) as caught:
                deliver(catalog, catalog.alerts.destination(name), FAILED, sleep=lambda _: None)
            assert str(caught.value).startswith(message), name
            assert "attempts" not in str(caught.value)  # none of these is retried
            assert "correct horse" not in str(caught.value)
    assert plain.mails == [] and tls.mails == []


# ---------------------------------------------------------------------------- the command


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_alerts_test_command(tmp_path: Path, receiver: WebhookReceiver, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HOOK_URL", receiver.url("/services/T000/B000/s3cr3tT0k3n"))
    catalog_with(tmp_path, webhook("team", "${HOOK_URL}", format="slack", max_retries=0))
    path = str(tmp_path / "integrations.yaml")

    code, out, err = cli(capsys, "alerts", "test", "team", "--catalog", path)
    assert (code, err) == (0, "") and out == "sent a test alert to webhook team (127.0.0.1)\n"
    [request] = receiver.requests
    assert request.json["text"].startswith(":wave: *integration_hub: test alert*")
    assert "alerts reach webhook team (127.0.0.1)" in request.json["text"]

    code, out, _ = cli(capsys, "alerts", "test", "team", "--json", "--catalog", path)
    assert code == 0 and json.loads(out) == {"destination": "team", "sent": True, "attempts": 1}

    receiver.statuses = [404]
    code, out, err = cli(capsys, "alerts", "test", "team", "--catalog", path)
    assert code == 1 and out == ""
    assert err == (
        "error: test alert to webhook team (127.0.0.1) failed: HTTP 404 Not Found: invalid_token: "
        "check the destination's url and headers\n"
    )

    code, out, err = cli(capsys, "alerts", "test", "nobody", "--catalog", path)
    assert code == 1 and err == "error: no alert destination named 'nobody' in the catalog (known: team)\n"
