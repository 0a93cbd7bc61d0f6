"""Alerts: what one alert says, how it reads at each destination, and delivering it.

An `Alert` carries counts, the run's own message and a link to Dagster: never row values.
Text that reaches a destination or a log goes through `Masker`, which replaces the value of
every ${VAR} the catalog names with `${VAR}`. `AlertSender` delivers with bounded retries and
never raises: a destination that keeps failing is logged and rested for a while, so a dead
one costs one timeout, not one per alert (sensor ticks stay well inside Dagster's 60 s limit).
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from .catalog import AlertRule, Alerts, Catalog, EmailDestination, WebhookDestination

HUB = "integration_hub"
REST_SECONDS = 300.0  # a destination that failed is not tried again for this long
MAX_RETRY_AFTER_SECONDS = 30.0  # the most a 429's Retry-After may make us wait
MAX_MESSAGE_CHARS = 1000

Destination = WebhookDestination | EmailDestination

TITLES = {
    "failed": "{integration} failed",
    "partial": "{integration} partially applied",
    "check_failed": "{integration}: check {check} failed",
    "stale": "{integration} is stale",
    "recovered": "{integration} recovered",
    "test": "test alert",
}
SLACK_ICONS = {
    "failed": ":red_circle:",
    "partial": ":large_orange_circle:",
    "check_failed": ":large_orange_circle:",
    "stale": ":hourglass:",
    "recovered": ":large_green_circle:",
    "test": ":wave:",
}


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Alert:
    """One event worth telling someone about."""

    event: str  # failed | partial | check_failed | stale | recovered | test
    integration: str | None
    message: str
    status: str | None = None  # the run's outcome, or the check's result
    run_id: str | None = None  # the Dagster run
    rows_read: int | None = None
    rows_applied: int | None = None
    rows_rejected: int | None = None
    check: str | None = None
    url: str | None = None  # where to look in Dagster
    at: datetime = field(default_factory=now_utc)

    @property
    def title(self) -> str:
        return f"{HUB}: " + TITLES[self.event].format(integration=self.integration, check=self.check)

    @property
    def counts(self) -> str | None:
        if self.rows_read is None:
            return None
        return f"{self.rows_read:,} read, {self.rows_applied or 0:,} applied, {self.rows_rejected or 0:,} rejected"

    def masked(self, masker: Masker) -> Alert:
        return replace(self, message=masker(self.message)[:MAX_MESSAGE_CHARS])

    def json_body(self) -> dict[str, Any]:
        return {
            "source": HUB,
            "event": self.event,
            "integration": self.integration,
            "status": self.status,
            "run_id": self.run_id,
            "rows_read": self.rows_read,
            "rows_applied": self.rows_applied,
            "rows_rejected": self.rows_rejected,
            "check": self.check,
            "message": self.message,
            "url": self.url,
            "at": self.at.isoformat(),
        }

    def lines(self) -> list[tuple[str, str]]:
        """(label, value) pairs shared by the Slack text and the email body."""
        pairs = [
            ("Integration", self.integration or ""),
            ("Status", self.status or ""),
            ("Dagster run", self.run_id or ""),
            ("Rows", self.counts or ""),
            ("Check", self.check or ""),
            ("Message", self.message),
        ]
        return [(label, value) for label, value in pairs if value]

    def slack_body(self) -> dict[str, Any]:
        def escape(text: str) -> str:  # Slack's mrkdwn control characters
            return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        text = [f"{SLACK_ICONS[self.event]} *{escape(self.title)}*"]
        text += [f"*{label}:* {escape(value)}" for label, value in self.lines() if label != "Integration"]
        if self.url:
            text.append(f"<{self.url}|Open in Dagster>")
        return {"text": "\n".join(text)}

    def email(self, destination: EmailDestination) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = self.title
        message["From"] = destination.from_address
        message["To"] = ", ".join(destination.to)
        message["Date"] = format_datetime(self.at)
        message["Message-ID"] = make_msgid(domain=destination.from_address.rsplit("@", 1)[-1])
        width = max(len(label) for label, _ in self.lines()) + 2
        body = [self.title, ""] + [f"{label + ':':<{width}}{value}" for label, value in self.lines()]
        if self.url:
            body += ["", f"Open in Dagster: {self.url}"]
        message.set_content("\n".join(body) + "\n")
        return message


class Masker:
    """Replaces the value of every ${VAR} the catalog names (4 characters or more) with `${VAR}`.

    A URL's path and query are masked on their own too: a webhook URL's secret is its path,
    which servers echo in error bodies.
    """

    def __init__(self, variables: Iterable[str], environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        values: dict[str, str] = {}
        for name in variables:
            value = env.get(name, "")
            if len(value) >= 4:
                values[value] = name
            if value.startswith(("http://", "https://")):
                parts = urlsplit(value)
                secret = parts.path + (f"?{parts.query}" if parts.query else "")
                if len(secret) >= 8:
                    values.setdefault(secret, name)
        self._values = sorted(values.items(), key=lambda item: len(item[0]), reverse=True)

    def __call__(self, text: str) -> str:
        for value, name in self._values:
            text = text.replace(value, f"${{{name}}}")
        return text


# ---------------------------------------------------------------------------- routing


def rules_for(alerts: Alerts, trigger: str, integration: str) -> list[AlertRule]:
    return [rule for rule in alerts.rules if trigger in rule.when and rule.covers(integration)]


def notify_names(rules: Iterable[AlertRule]) -> list[str]:
    """The destinations of some rules, each once, in the order the catalog names them."""
    names: list[str] = []
    for rule in rules:
        names += [name for name in rule.notify if name not in names]
    return names


def dagster_link(alerts: Alerts, path: str) -> str:
    return f"{alerts.dagster_url.rstrip('/')}/{path.lstrip('/')}"


# ---------------------------------------------------------------------------- delivery


class DeliveryError(Exception):
    """One attempt failed; `transient` says whether trying again may help."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after: float | None = None


def describe(destination: Destination) -> str:
    """'webhook data_team (hooks.slack.com)': where it goes, without a secret path or token."""
    if isinstance(destination, WebhookDestination):
        host = urlsplit(destination.url.get_secret_value()).hostname or "?"
        return f"webhook {destination.name} ({host})"
    return f"email {destination.name} ({destination.host}:{destination.port})"


def _ssl_context(catalog: Catalog, ca_bundle: str | None) -> ssl.SSLContext:
    if not ca_bundle:
        return ssl.create_default_context()
    path = catalog.resolve_path(ca_bundle)
    if not path.is_file():
        raise DeliveryError(f"ca_bundle {path} does not exist: point it at a PEM file of CAs", transient=False)
    return ssl.create_default_context(cafile=str(path))


def _post_webhook(catalog: Catalog, destination: WebhookDestination, alert: Alert) -> None:
    body = alert.slack_body() if destination.format == "slack" else alert.json_body()
    headers = {"Content-Type": "application/json", "User-Agent": HUB}
    headers.update({key: value.get_secret_value() for key, value in destination.headers.items()})
    timeout = httpx.Timeout(destination.timeout_seconds)  # connect, read, write and pool each
    try:
        with httpx.Client(timeout=timeout, verify=_ssl_context(catalog, destination.ca_bundle)) as client:
            response = client.post(destination.url.get_secret_value(), content=json.dumps(body), headers=headers)
    except httpx.InvalidURL:
        raise DeliveryError("url is not a valid URL: check it (and the variable it comes from)", transient=False) from None
    except httpx.TimeoutException:
        raise DeliveryError(f"no answer within {destination.timeout_seconds:g} s", transient=True) from None
    except httpx.ConnectError as exc:
        raise DeliveryError(f"cannot connect ({_reason(exc)})", transient=True) from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__} ({_reason(exc)})", transient=True) from None
    if response.status_code < 300:
        return
    transient = response.status_code in (408, 425, 429) or response.status_code >= 500
    detail = " ".join(response.text.split())[:200]
    error = DeliveryError(
        f"HTTP {response.status_code} {response.reason_phrase}{': ' + detail if detail else ''}"
        + ("" if transient else ": check the destination's url and headers"),
        transient=transient,
    )
    retry_after = response.headers.get("Retry-After", "")
    if retry_after.isdigit():
        error.retry_after = min(float(retry_after), MAX_RETRY_AFTER_SECONDS)
    raise error


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _send_email(catalog: Catalog, destination: EmailDestination, alert: Alert) -> None:
    where = f"{destination.host}:{destination.port}"
    context = _ssl_context(catalog, destination.ca_bundle)
    timeout = destination.timeout_seconds  # smtplib applies it to the connect and to every read
    try:
        smtp: smtplib.SMTP = (
            smtplib.SMTP_SSL(destination.host, destination.port, timeout=timeout, context=context)
            if destination.ssl
            else smtplib.SMTP(destination.host, destination.port, timeout=timeout)
        )
    except TimeoutError:
        raise DeliveryError(f"no answer from {where} within {timeout:g} s", transient=True) from None
    except ssl.SSLError as exc:
        raise DeliveryError(f"TLS with {where} failed ({_reason(exc)}): check ssl, port and ca_bundle", transient=False) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"cannot connect to {where} ({_reason(exc)})", transient=True) from None
    try:
        with smtp:
            smtp.ehlo()
            encrypted = destination.ssl
            if not destination.ssl and destination.starttls is not False:
                if smtp.has_extn("starttls"):
                    smtp.starttls(context=context)
                    smtp.ehlo()
                    encrypted = True
                elif destination.starttls:
                    raise DeliveryError(
                        f"{where} does not offer STARTTLS, which starttls: true requires: check host and port "
                        "(587 usually offers it; 465 needs ssl: true)",
                        transient=False,
                    )
            if destination.user:
                if not encrypted:
                    raise DeliveryError(
                        f"{where} offers no TLS, and the password is never sent in the clear: use a server "
                        "with STARTTLS or ssl: true",
                        transient=False,
                    )
                assert destination.password is not None  # the catalog requires it with user
                smtp.login(destination.user, destination.password.get_secret_value())
            smtp.send_message(alert.email(destination))
    except DeliveryError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(
            f"{where} refused the login of {destination.user!r} ({exc.smtp_code}): check user and password",
            transient=False,
        ) from None
    except smtplib.SMTPRecipientsRefused as exc:
        refused = ", ".join(sorted(exc.recipients))
        raise DeliveryError(f"{where} refused the recipients {refused}: check to", transient=False) from None
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        raise DeliveryError(f"{where} answered {exc.smtp_code} {_reason(ValueError(text))}", transient=400 <= exc.smtp_code < 500) from None
    except ssl.SSLError as exc:
        raise DeliveryError(f"STARTTLS with {where} failed ({_reason(exc)}): check ca_bundle", transient=False) from None
    except TimeoutError:
        raise DeliveryError(f"{where} stopped answering within {timeout:g} s", transient=True) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"{where}: {type(exc).__name__} ({_reason(exc)})", transient=True) from None


def deliver_once(catalog: Catalog, destination: Destination, alert: Alert) -> None:
    """One attempt; DeliveryError says why it failed."""
    if isinstance(destination, WebhookDestination):
        _post_webhook(catalog, destination, alert)
    else:
        _send_email(catalog, destination, alert)


def deliver(
    catalog: Catalog, destination: Destination, alert: Alert, sleep: Callable[[float], None] = time.sleep
) -> int:
    """Deliver with retries on transient errors (backoff doubling); return the attempts it took."""
    delay = destination.retry_backoff_seconds
    attempts = destination.max_retries + 1
    for attempt in range(1, attempts + 1):
        try:
            deliver_once(catalog, destination, alert)
            return attempt
        except DeliveryError as exc:
            if not exc.transient or attempt == attempts:
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                raise DeliveryError(f"{exc}{tries}", transient=exc.transient) from None
            sleep(max(delay, exc.retry_after or 0))
            delay *= 2
    raise AssertionError("unreachable")


class Log(Protocol):
    def info(self, msg: str) -> None: ...
    def warning(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...


@dataclass
class Delivery:
    destination: str
    ok: bool
    attempts: int = 0
    error: str | None = None


@dataclass
class AlertSender:
    """Sends alerts for the sensors of one code location; never raises."""

    catalog: Catalog
    rest_seconds: float = REST_SECONDS
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    _resting: dict[str, tuple[float, str]] = field(default_factory=dict)  # name -> (until, why)

    @property
    def masker(self) -> Masker:
        return Masker(self.catalog.env_variables)

    def send(self, alert: Alert, names: Sequence[str], log: Log) -> list[Delivery]:
        masker = self.masker
        alert = alert.masked(masker)
        results = []
        for name in names:
            destination = self.catalog.alerts.destination(name)
            where = masker(describe(destination))
            resting = self._resting.get(name)
            if resting and self.clock() < resting[0]:
                log.warning(f"alert {alert.title!r} not sent to {where}: it failed moments ago ({resting[1]})")
                results.append(Delivery(name, ok=False, error=resting[1]))
                continue
            try:
                attempts = deliver(self.catalog, destination, alert, sleep=self.sleep)
            except Exception as exc:  # noqa: BLE001 - a failing destination never fails the sensor tick
                reason = masker(str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {_reason(exc)}")
                self._resting[name] = (self.clock() + self.rest_seconds, reason)
                log.error(f"alert {alert.title!r} not sent to {where}: {reason}")
                results.append(Delivery(name, ok=False, error=reason))
                continue
            self._resting.pop(name, None)
            log.info(f"alert {alert.title!r} sent to {where}")
            results.append(Delivery(name, ok=True, attempts=attempts))
        return results
