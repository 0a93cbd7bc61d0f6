"""The End User Update API over real HTTP: the server runs as a subprocess on a loopback port."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from integration_hub.api.tokens import TokenStore
from integration_hub.core.catalog import Catalog
from integration_hub_tests.api_support import (
    ApiServer,
    Tokens,
    apply_batches,
    catalog_path,
    issue_tokens,
    write_catalog,
)
from integration_hub_tests.support import query

MB = 1024 * 1024


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.catalog: Catalog = write_catalog(root)
        self.tokens: Tokens = issue_tokens(self.catalog)
        self.dagster_home = root / "dagster_home"
        self.dagster_home.mkdir()

    def pending(self, integration: str = "web") -> list[Path]:
        folder = self.catalog.landing_path / integration / "pending"
        return sorted(folder.glob("*.ndjson")) if folder.exists() else []


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def server(env: Env) -> Iterator[ApiServer]:
    with ApiServer(env.catalog, env.dagster_home) as running:
        yield running


@pytest.fixture(scope="module")
def limited(env: Env) -> Iterator[ApiServer]:
    """A second server with small limits, on the same landing folder and tokens."""
    args = ("--max-records", "5", "--max-body-bytes", "4096", "--rate-limit", "2", "--rate-burst", "3")
    with ApiServer(env.catalog, env.dagster_home, *args, log=env.root / "limited.log") as running:
        yield running


@pytest.fixture
def client(server: ApiServer, env: Env) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {env.tokens.bearer}"}, timeout=30
    ) as c:
        yield c


def body(env: Env, *records: dict, integration: str = "web") -> dict:
    return {"integration_token": env.tokens.integration[integration], "data": list(records)}


# ---------------------------------------------------------------------------- basics


def test_healthz_and_openapi(client: httpx.Client, env: Env) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    # The API only reads Dagster's state: it never creates its storage (that would race `dagster dev`).
    assert sorted(p.name for p in env.dagster_home.iterdir()) == ["dagster.yaml"]
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/end-users"]["post"]
    assert {"202", "400", "401", "404", "413", "422", "429"} <= set(operation["responses"])
    assert operation["security"] == [{"bearerAuth": []}]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "/v1/batches/{batch_id}" in spec["paths"]
    assert "swagger" in client.get("/docs").text.lower()


def test_valid_records_are_accepted_invalid_ones_listed(client: httpx.Client, env: Env) -> None:
    response = client.post(
        "/v1/end-users",
        json=body(
            env,
            {"userId": "alice", "planTier": "gold", "visits": 12, "isActive": "yes", "signup": "2024-05-01",
             "lastSeen": "2024-05-01T13:45:00+02:00"},
            {"userId": "", "planTier": "silver"},
            {"userId": "bob", "visits": "lots"},
            {"userId": "carol", "favouriteColour": "red"},
            {"planTier": "no user id"},
        ),
    )  # fmt: skip
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] == 1
    assert answer["rejected_count"] == 4
    assert {(p["index"], p["field"]) for p in answer["rejected"]} == {
        (1, "userId"),
        (2, "visits"),
        (3, "favouriteColour"),
        (4, "userId"),
    }
    assert all(p["message"] for p in answer["rejected"])
    # Durable before acknowledged: the batch file is already in pending/, canonical strings only.
    landed = env.catalog.landing_path / "web" / "pending" / f"{answer['batch_id']}.ndjson"
    assert json.loads(landed.read_text()) == {
        "userId": "alice", "planTier": "gold", "visits": "12", "isActive": "true", "signup": "2024-05-01",
        "lastSeen": "2024-05-01T11:45:00+00:00",
    }  # fmt: skip
    status = client.get(f"/v1/batches/{answer['batch_id']}").json()
    assert status["status"] == "accepted"
    assert status["accepted"] == 1 and status["rejected_count"] == 4
    assert status["rejected"] == answer["rejected"]


def test_no_valid_record_is_422_and_lands_nothing(client: httpx.Client, env: Env) -> None:
    before = env.pending()
    response = client.post(
        "/v1/end-users", json=body(env, {"userId": " "}, {"visits": 1}, {"userId": "x", "visits": "?"})
    )
    assert response.status_code == 422
    answer = response.json()
    assert answer["error"] == "no_valid_records"
    assert answer["accepted"] == 0 and answer["rejected_count"] == 3
    assert [p["index"] for p in answer["rejected"]] == [0, 1, 2]
    assert env.pending() == before


def test_user_id_of_10_kb_is_rejected_with_a_reason(client: httpx.Client, env: Env) -> None:
    response = client.post("/v1/end-users", json=body(env, {"userId": "u" * 10_240, "planTier": "gold"}))
    assert response.status_code == 422
    problem = response.json()["rejected"][0]
    assert problem["field"] == "userId" and "10,240 characters" in problem["message"]
    ok = client.post("/v1/end-users", json=body(env, {"userId": "u" * 1024, "planTier": "gold"}))
    assert ok.status_code == 202


def test_unicode_round_trips_to_duckdb(client: httpx.Client, env: Env) -> None:
    user = "j\u00fcrgen.m\u00fcller@beispiel.de \u6771\u4eac \U0001f600"
    tier = "\u0417\u043e\u043b\u043e\u0442\u043e \u2014 \u00e9t\u00e9 \u2028 \U0001f947"
    # Sent as raw UTF-8 (not \u escapes) and once escaped: both are the same JSON.
    raw = json.dumps(body(env, {"userId": user, "planTier": tier}), ensure_ascii=False).encode("utf-8")
    assert (
        client.post("/v1/end-users", content=raw, headers={"Content-Type": "application/json"}).status_code
        == 202
    )
    escaped = client.post("/v1/end-users", json=body(env, {"userId": "\u00e5sa", "planTier": "\u00c5"}))
    assert escaped.status_code == 202
    lone = client.post("/v1/end-users", content=b'{"integration_token": "%s", "data": [{"userId": "\\ud800"}]}'
                       % env.tokens.integration["web"].encode(), headers={"Content-Type": "application/json"})  # fmt: skip
    assert lone.status_code == 422 and "surrogate" in lone.json()["rejected"][0]["message"]
    apply_batches(env.catalog)
    rows = dict(query(env.catalog, "SELECT user_id, plan_tier FROM user_profiles"))
    assert rows[user] == tier
    assert rows["\u00e5sa"] == "\u00c5"


def test_applied_batch_status_and_bookkeeping(client: httpx.Client, env: Env) -> None:
    response = client.post(
        "/v1/end-users",
        json=body(
            env, {"userId": "dave", "planTier": "bronze", "visits": "3.5"}, {"userId": "", "visits": 1}
        ),
    )
    batch_id = response.json()["batch_id"]
    apply_batches(env.catalog)
    status = client.get(f"/v1/batches/{batch_id}").json()
    assert status["status"] == "applied"
    assert status["rows_applied"] == 1 and status["accepted"] == 1 and status["rejected_count"] == 1
    run = query(
        env.catalog,
        "SELECT kind, status, rows_read, rows_applied FROM integration_runs WHERE source = ?",
        [batch_id],
    )
    assert run == [("api", "success", 1, 1)]
    assert query(env.catalog, "SELECT visits FROM attributes_web WHERE user_id = 'dave'") == [(3.5,)]
    assert env.pending() == []


# ---------------------------------------------------------------------------- auth and tokens


def test_missing_invalid_and_revoked_bearer_tokens_get_401(server: ApiServer, env: Env) -> None:
    payload = body(env, {"userId": "u1", "planTier": "gold"})
    url = f"{server.url}/v1/end-users"
    missing = httpx.post(url, json=payload)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert httpx.post(url, json=payload, headers={"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 401
    invalid = httpx.post(url, json=payload, headers={"Authorization": "Bearer ihb_not-a-real-token"})
    assert invalid.status_code == 401
    assert "ihb_not-a-real-token" not in invalid.text

    store = TokenStore(env.catalog.landing_path)
    token = store.create_bearer("short-lived")
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.post(url, json=payload, headers=headers).status_code == 202
    store.revoke_bearer("short-lived")
    revoked = httpx.post(url, json=payload, headers=headers)  # at once, in the running server
    assert revoked.status_code == 401
    assert revoked.json() == invalid.json()
    assert (
        httpx.get(f"{server.url}/v1/batches/b_20240101T000000000000Z_00000000", headers=headers).status_code
        == 401
    )
    store.close()


def test_unknown_rotated_and_disabled_integration_tokens_get_the_same_404(
    client: httpx.Client, env: Env
) -> None:
    unknown = client.post(
        "/v1/end-users", json={"integration_token": "ihi_unknown", "data": [{"userId": "u"}]}
    )
    assert unknown.status_code == 404
    disabled = client.post(
        "/v1/end-users", json=body(env, {"userId": "u", "tier": "x"}, integration="legacy_feed")
    )
    assert disabled.status_code == 404
    assert disabled.json() == unknown.json()
    assert not (env.catalog.landing_path / "legacy_feed").exists()  # nothing landed for it

    store = TokenStore(env.catalog.landing_path)
    old = env.tokens.integration["qa_feed"]
    new = store.issue_integration_token("qa_feed")
    store.close()
    env.tokens.integration["qa_feed"] = new
    rotated = client.post(
        "/v1/end-users", json={"integration_token": old, "data": [{"id": "q1", "score": 1}]}
    )
    assert rotated.status_code == 404 and rotated.json() == unknown.json()
    assert (
        client.post(
            "/v1/end-users", json=body(env, {"id": "q1", "score": 1}, integration="qa_feed")
        ).status_code
        == 202
    )


def test_disabling_in_dagster_stops_the_api_within_seconds(
    client: httpx.Client, env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from integration_hub.core.state import dagster_instance, set_enabled

    monkeypatch.setenv("DAGSTER_HOME", str(env.dagster_home))  # the server's instance
    monkeypatch.setenv("INTEGRATION_HUB_CATALOG", str(catalog_path(env.catalog)))
    integration = env.catalog.integration("qa_feed")
    payload = body(env, {"id": "q2", "score": 2}, integration="qa_feed")
    with dagster_instance(env.catalog) as instance:
        set_enabled(instance, integration, False)
        try:
            deadline = time.monotonic() + 10
            while client.post("/v1/end-users", json=payload).status_code != 404:
                assert time.monotonic() < deadline, "still accepting 10 s after the integration was disabled"
                time.sleep(0.5)
            landed = len(env.pending("qa_feed"))
            assert client.post("/v1/end-users", json=payload).status_code == 404
            assert len(env.pending("qa_feed")) == landed
        finally:
            set_enabled(instance, integration, True)
    deadline = time.monotonic() + 10
    while client.post("/v1/end-users", json=payload).status_code != 202:
        assert time.monotonic() < deadline
        time.sleep(0.5)


# ---------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "content",
    [
        b"this is not json",
        b'{"integration_token": "x", "data": [',
        b"[1, 2, 3]",
        b'{"data": [{"userId": "u"}]}',
        b'{"integration_token": 5, "data": [{"userId": "u"}]}',
        b'{"integration_token": "ihi_x", "data": {"userId": "u"}}',
        b'{"integration_token": "ihi_x", "data": []}',
        b'{"integration_token": "ihi_x", "data": [{"userId": "u"}], "extra": 1}',
        b'{"integration_token": "ihi_x", "data": [{"userId": "u", "visits": NaN}]}',
        b'{"integration_token": "ihi_x", "data": [{"userId": "\xff\xfe"}]}',
        b"",
    ],
    ids=["text", "truncated", "array", "no-token", "token-type", "data-object", "data-empty", "extra-field",
         "nan", "bad-utf8", "empty"],
)  # fmt: skip
def test_malformed_bodies_get_400(client: httpx.Client, content: bytes) -> None:
    response = client.post("/v1/end-users", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] in ("invalid_json", "invalid_request")


def test_deeply_nested_json_is_400_not_a_crash(client: httpx.Client, env: Env) -> None:
    bomb = b"[" * 200_000 + b"]" * 200_000
    response = client.post("/v1/end-users", content=bomb, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert "more than 8,002 JSON objects and arrays" in response.json()["message"]
    nested: object = "x"
    for _ in range(40):
        nested = {"a": nested}
    response = client.post("/v1/end-users", json=body(env, {"userId": "u", "planTier": nested}))
    assert response.status_code == 400 and "deeper than 32" in response.json()["message"]
    assert client.get("/healthz").status_code == 200


def test_too_many_records_is_413(client: httpx.Client, env: Env) -> None:
    records = [{"userId": f"u{i}"} for i in range(2001)]
    response = client.post("/v1/end-users", json=body(env, *records))
    assert response.status_code == 413 and response.json()["error"] == "too_many_records"
    assert client.post("/v1/end-users", json=body(env, *records[:2000])).status_code == 202


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_a_50_mb_body_is_refused_without_reading_it(server: ApiServer, env: Env) -> None:
    assert server.process is not None
    rss_before = _rss(server.process.pid)
    # Declared size: the answer comes before the client sends the body at all.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/end-users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {env.tokens.bearer}\r\nContent-Length: {50 * MB}\r\n\r\n".encode()
            + b'{"integration_token": "'
        )
        head = sock.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert "connection: close" in head.lower()

    # Streamed without a declared size (chunked): the server stops reading past 5 MB.
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"integration_token": "x", "data": ["'
        piece = b"a" * 65536
        while sent < 50 * MB:
            sent += len(piece)
            yield piece
        yield b'"]}'

    try:
        response = httpx.post(
            f"{server.url}/v1/end-users",
            content=chunks(),
            headers={"Authorization": f"Bearer {env.tokens.bearer}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 413
    except httpx.TransportError:
        pass  # the server may close the connection while the client is still sending: also a refusal
    assert sent < 50 * MB  # the server stopped reading: the client could not send it all
    assert _rss(server.process.pid) - rss_before < 20 * MB
    assert httpx.get(f"{server.url}/healthz").status_code == 200


# ---------------------------------------------------------------------------- idempotency


def test_idempotency_key_returns_the_first_answer_once(client: httpx.Client, env: Env) -> None:
    payload = body(env, {"userId": "idem-1", "planTier": "gold"}, {"userId": ""})
    headers = {"Idempotency-Key": "order-42-attempt"}
    before = len(env.pending())
    first = client.post("/v1/end-users", json=payload, headers=headers)
    assert first.status_code == 202
    again = client.post("/v1/end-users", json=payload, headers=headers)
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(env.pending()) == before + 1  # accepted once

    other = client.post("/v1/end-users", json=body(env, {"userId": "idem-2"}), headers=headers)
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
    fresh = client.post("/v1/end-users", json=payload, headers={"Idempotency-Key": "order-43"})
    assert fresh.status_code == 202 and fresh.json()["batch_id"] != first.json()["batch_id"]
    bad = client.post("/v1/end-users", json=payload, headers={"Idempotency-Key": "k" * 300})
    assert bad.status_code == 400

    # The key belongs to the bearer token: another organisation token does not see it.
    store = TokenStore(env.catalog.landing_path)
    other_bearer = store.create_bearer("other-org")
    store.close()
    separate = client.post(
        "/v1/end-users", json=payload, headers={**headers, "Authorization": f"Bearer {other_bearer}"}
    )
    assert separate.status_code == 202 and separate.json()["batch_id"] != first.json()["batch_id"]


# ---------------------------------------------------------------------------- limits


def test_rate_limit_answers_429_with_retry_after(limited: ApiServer, env: Env) -> None:
    headers = {"Authorization": f"Bearer {env.tokens.bearer}"}
    payload = body(env, {"userId": "rl", "planTier": "gold"})
    with httpx.Client(base_url=limited.url, headers=headers) as c:
        codes = [c.post("/v1/end-users", json=payload) for _ in range(8)]
        statuses = [r.status_code for r in codes]
        assert statuses[:3] == [202, 202, 202]  # the burst
        limited_responses = [r for r in codes if r.status_code == 429]
        assert limited_responses, statuses
        retry_after = int(limited_responses[0].headers["Retry-After"])
        assert retry_after >= 1
        assert limited_responses[0].json()["error"] == "rate_limited"
        time.sleep(retry_after)
        assert c.post("/v1/end-users", json=payload).status_code == 202


def test_configured_limits(limited: ApiServer, env: Env) -> None:
    headers = {"Authorization": f"Bearer {TokenStore(env.catalog.landing_path).create_bearer('limits')}"}
    with httpx.Client(base_url=limited.url, headers=headers) as c:
        too_many = c.post("/v1/end-users", json=body(env, *({"userId": f"u{i}"} for i in range(6))))
        assert too_many.status_code == 413 and too_many.json()["error"] == "too_many_records"
        too_big = c.post("/v1/end-users", json=body(env, {"userId": "u", "planTier": "x" * 5000}))
        assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"


def test_unknown_batch_is_404(client: httpx.Client) -> None:
    assert client.get("/v1/batches/b_20240101T000000000000Z_00000000").status_code == 404
    assert client.get("/v1/batches/..%2F..%2Ftokens").status_code == 404
