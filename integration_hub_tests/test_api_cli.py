"""`integration-hub tokens | endpoint | api`: tokens shown once, stored hashed, rotated and revoked."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from integration_hub.api.__main__ import main as api_main
from integration_hub.api.tokens import TokenStore
from integration_hub.core.catalog import Catalog
from integration_hub_tests.api_support import catalog_path, write_catalog


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return write_catalog(tmp_path)


def run(catalog: Catalog, *args: str) -> int:
    return api_main(["--catalog", str(catalog_path(catalog)), *args])


def test_bearer_tokens_are_shown_once_and_stored_hashed(
    catalog: Catalog, capsys: pytest.CaptureFixture
) -> None:
    assert run(catalog, "tokens", "create", "crm-sync", "--json") == 0
    created = json.loads(capsys.readouterr().out)
    token = created["token"]
    assert created["name"] == "crm-sync" and token.startswith("ihb_") and len(token) > 40
    with sqlite3.connect(catalog.landing_path / "tokens.sqlite3") as con:
        stored = [value for row in con.execute("SELECT * FROM bearer_tokens") for value in row]
    assert token not in stored
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    files = b"".join(p.read_bytes() for p in catalog.landing_path.glob("tokens.sqlite3*"))
    assert token.encode() not in files

    assert run(catalog, "tokens", "create", "crm-sync") == 1
    assert "already exists" in capsys.readouterr().err

    assert run(catalog, "tokens", "list") == 0
    listing = capsys.readouterr().out
    assert "crm-sync" in listing and "active" in listing and token not in listing
    assert run(catalog, "tokens", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "active"

    store = TokenStore(catalog.landing_path)
    assert store.authenticate(token) == "crm-sync"
    assert run(catalog, "tokens", "revoke", "crm-sync") == 0
    assert store.authenticate(token) is None
    assert run(catalog, "tokens", "revoke", "crm-sync") == 1
    assert "no active token" in capsys.readouterr().err
    assert run(catalog, "tokens", "create", "crm-sync") == 0  # the name is free again after revoking
    store.close()


def test_endpoint_issues_rotates_and_explains(catalog: Catalog, capsys: pytest.CaptureFixture) -> None:
    assert run(catalog, "endpoint", "web", "--json", "--url", "https://hub.example.com/") == 0
    first = json.loads(capsys.readouterr().out)
    assert first["url"] == "https://hub.example.com/v1/end-users"
    assert first["integration_token"].startswith("ihi_")

    assert run(catalog, "endpoint", "web", "--json") == 0
    assert json.loads(capsys.readouterr().out)["integration_token"] is None  # shown only when issued

    assert run(catalog, "endpoint", "web") == 0
    text = capsys.readouterr().out
    assert "--rotate" in text and "curl" in text and "/v1/end-users" in text and "userId" in text

    assert run(catalog, "endpoint", "web", "--rotate") == 0
    rotated = capsys.readouterr().out
    store = TokenStore(catalog.landing_path)
    assert store.integration_for(first["integration_token"]) is None  # the old token stopped working
    new = next(word for word in rotated.split() if word.startswith("ihi_"))
    assert store.integration_for(new) == "web"
    store.close()

    assert run(catalog, "endpoint", "crm") == 1
    assert "type: api" in capsys.readouterr().err
    assert run(catalog, "endpoint", "nope") == 1
    assert "no integration named 'nope'" in capsys.readouterr().err


def test_invalid_catalog_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "integrations.yaml"
    broken.write_text("integrations: [{name: x, type: api}]\n")
    assert api_main(["--catalog", str(broken), "tokens", "list"]) == 2
    assert "invalid catalog" in capsys.readouterr().err


def test_registered_in_the_integration_hub_command_line(
    catalog: Catalog, capsys: pytest.CaptureFixture
) -> None:
    from integration_hub.cli.main import build_parser, main

    parser = build_parser()
    args = parser.parse_args(["api", "--port", "9999", "--workers", "2", "--rate-limit", "10"])
    assert (args.port, args.workers, args.rate_limit, args.max_records) == (9999, 2, 10.0, 2000)
    assert parser.parse_args(["api"]).claim_timeout == 60.0
    assert run(catalog, "api", "--claim-timeout", "1") == 1
    assert "--claim-timeout must be at least 5 seconds" in capsys.readouterr().err
    assert callable(args.func)
    assert main(["--catalog", str(catalog_path(catalog)), "tokens", "create", "via-main", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "via-main"
    assert main(["tokens", "list", "--catalog", str(catalog_path(catalog))]) == 0
    assert "via-main" in capsys.readouterr().out


def test_check_and_dry_run_hooks(catalog: Catalog, capsys: pytest.CaptureFixture) -> None:
    from integration_hub.api.check import check_api_integration, dry_run_api_integration
    from integration_hub.api.tokens import TokenStore

    web = catalog.integration("web")
    [outcome] = check_api_integration(catalog, web)
    assert not outcome.ok and "integration-hub endpoint web" in outcome.message
    TokenStore(catalog.landing_path).issue_integration_token("web")
    [outcome] = check_api_integration(catalog, web)
    assert outcome.ok and "no batch waiting" in outcome.message
    assert dry_run_api_integration(catalog, web, None) == 0
    assert "no pending batches" in capsys.readouterr().out
