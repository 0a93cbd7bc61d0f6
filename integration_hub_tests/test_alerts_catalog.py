"""The catalog's alerts section: defaults, durations, and one clear message per problem."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from integration_hub.core.catalog import (
    CatalogError,
    EmailDestination,
    WebhookDestination,
    format_duration,
    parse_catalog,
    parse_duration,
)

BASE: dict[str, Any] = {
    "connections": [{"name": "drop", "type": "local", "path": "landing"}],
    "integrations": [
        {"name": name, "type": "s3_csv", "connection": "drop", "folder": name, "user_id_column": "email",
         "properties": [{"column": "plan", "name": f"{name}_plan"}]}
        for name in ("crm", "billing")
    ],
}

ALERTS: dict[str, Any] = {
    "destinations": [
        {"name": "data_team", "type": "webhook", "url": "https://hooks.slack.com/services/T/B/x", "format": "slack"},
        {"name": "oncall", "type": "email", "host": "smtp.acme.com", "port": 587, "starttls": True,
         "user": "hub@acme.com", "password": "pw", "from": "hub@acme.com", "to": ["data@acme.com"]},
    ],
    "rules": [
        {"when": ["failed", "partial", "check_failed", "stale", "recovered"], "integrations": "all",
         "notify": ["data_team", "oncall"], "partial_rejected_ratio": 0.05},
    ],
    "max_staleness": {"crm": "26h"},
}


def with_alerts(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    document["alerts"] = {**copy.deepcopy(ALERTS), **changes}
    return document


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(document)
    return caught.value.problems


def test_a_complete_alerts_section_loads_with_defaults() -> None:
    alerts = parse_catalog(with_alerts()).alerts
    hook, mail = alerts.destinations
    assert isinstance(hook, WebhookDestination) and hook.format == "slack"
    assert (hook.timeout_seconds, hook.max_retries, hook.retry_backoff_seconds) == (10.0, 2, 1.0)
    assert isinstance(mail, EmailDestination) and mail.from_address == "hub@acme.com" and mail.starttls is True
    assert mail.password is not None and "pw" not in repr(mail)
    [rule] = alerts.rules
    assert rule.covers("billing") and rule.partial_rejected_ratio == 0.05
    assert alerts.max_staleness == {"crm": timedelta(hours=26)}
    assert alerts.dagster_url == "http://127.0.0.1:3000"
    assert parse_catalog(copy.deepcopy(BASE)).alerts.rules == []  # no section: no alerts


def test_durations() -> None:
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("26h") == timedelta(hours=26)
    assert parse_duration("2d") == timedelta(days=2)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("90s") == timedelta(seconds=90)
    assert [format_duration(parse_duration(t)) for t in ("26h", "1d12h", "90s", "2d")] == ["1d 2h", "1d 12h", "1m 30s", "2d"]
    for wrong in ("26", "26 hours", "h", "0m", "-1h", 26):
        with pytest.raises(ValueError, match="is not a duration|must be longer than zero"):
            parse_duration(wrong)


def test_rules_naming_unknown_destinations_and_integrations_are_rejected() -> None:
    rules = [
        {"when": ["failed"], "integrations": ["crm", "crmm"], "notify": ["data_team", "data_tem"]},
        {"when": ["partial"], "notify": ["pager"]},
    ]
    assert problems(with_alerts(rules=rules)) == [
        "alerts rule #1 field 'notify' names unknown destination 'data_tem': declare it under "
        "alerts.destinations (known: data_team, oncall)",
        "alerts rule #1 field 'integrations' names unknown integration 'crmm': use 'all' or integrations "
        "declared in the catalog (known: billing, crm)",
        "alerts rule #2 field 'notify' names unknown destination 'pager': declare it under "
        "alerts.destinations (known: data_team, oncall)",
    ]


def test_every_problem_of_the_section_is_reported_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("SMTP_PASSWORD", raising=False)
    document = with_alerts(
        destinations=[
            {"name": "data_team", "type": "webhook", "url": "${SLACK_WEBHOOK_URL}", "format": "teams"},
            {"name": "oncall", "type": "email", "host": "smtp.acme.com", "user": "hub@acme.com",
             "password": "${SMTP_PASSWORD}", "from": "hub@acme.com", "to": ["data@acme.com", "nobody"]},
            {"name": "ftp", "type": "webhook", "url": "ftp://files.acme.com/x"},
            {"name": "ftp", "type": "pager"},
        ],
        rules=[
            {"when": ["failed", "exploded"], "notify": ["data_team"]},
            {"when": ["stale"], "integrations": ["billing"], "notify": ["oncall"], "partial_rejected_ratio": 1.5},
            {"when": ["stale"], "integrations": ["billing"], "notify": ["oncall"]},
            {"when": ["recovered"], "notify": ["ftp"]},
        ],
        max_staleness={"crm": "26 hours", "ghost": "2d"},
        dagster_url="dagster.acme.com",
    )
    assert problems(document) == [
        "alerts destination 'data_team' field 'url' Field required: set the environment variable SLACK_WEBHOOK_URL",
        "alerts destination 'data_team' field 'format' Input should be 'slack' or 'json' (got 'teams')",
        "alerts destination 'oncall' field 'to[1]' 'nobody' is not an email address: write it as name@example.com",
        "alerts destination 'ftp' field 'url' must be an http:// or https:// URL",
        "alerts destination 'ftp' has an unknown type (got 'pager'): 'webhook', 'email'",
        "alerts rule #1 field 'when[1]' Input should be 'failed', 'partial', 'check_failed', 'stale' or "
        "'recovered' (got 'exploded')",
        "alerts rule #2 field 'partial_rejected_ratio' Input should be less than or equal to 1",
        "alerts field 'max_staleness' for integration 'crm': '26 hours' is not a duration: use a whole number "
        "and a unit (s, m, h, d), e.g. 30m, 26h, 2d or 1d12h",
        "alerts field 'dagster_url' must be an http:// or https:// URL",
        "alerts rule #3 alerts on 'stale', but none of its integrations has a max_staleness: add e.g. "
        "max_staleness: {billing: 26h} under alerts",
        "alerts rule #4 alerts only on 'recovered': a recovery is sent for a problem the same rule alerts on; "
        "add failed, partial, check_failed or stale to its when",
        "alerts field 'max_staleness' names unknown integration 'ghost': use integrations declared in the "
        "catalog (known: billing, crm)",
    ]


def test_a_login_needs_its_password_and_names_are_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMTP_PASSWORD", raising=False)
    mail = {"name": "oncall", "type": "email", "host": "smtp.acme.com", "user": "hub@acme.com",
            "password": "${SMTP_PASSWORD}", "from": "hub@acme.com", "to": ["data@acme.com"]}
    hook = {"name": "hook", "type": "webhook", "url": "https://example.com/x"}
    assert problems(with_alerts(destinations=[mail, hook, hook], rules=[], max_staleness={})) == [
        "alerts destination 'oncall' field 'password' is needed with 'user': set the environment variable SMTP_PASSWORD",
        "alerts destination 'hook' is declared 2 times: names must be unique; rename one",
    ]
    monkeypatch.setenv("SMTP_PASSWORD", "pw")
    catalog = parse_catalog(with_alerts(destinations=[mail], rules=[], max_staleness={}))
    assert catalog.alerts.destination("oncall").password.get_secret_value() == "pw"
    assert catalog.env_variables == ("SMTP_PASSWORD",)
