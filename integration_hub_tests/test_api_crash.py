"""Crash test: SIGKILL the API mid-stream; every acknowledged record reaches DuckDB, nothing else does."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import httpx
import pytest

from integration_hub.definitions import build_definitions
from integration_hub_tests.api_support import ApiServer, issue_tokens, write_catalog
from integration_hub_tests.support import query

RECORDS_PER_REQUEST = 40
CLIENTS = 3


@dataclass
class Request:
    key: str
    records: list[dict[str, str]]
    outcome: str = "unsent"  # unsent | acked | failed | unknown
    batch_id: str | None = None

    def payload(self, integration_token: str) -> dict:
        return {"integration_token": integration_token, "data": self.records}


@dataclass
class Client:
    number: int
    requests: list[Request] = field(default_factory=list)


def _make_request(client: int, n: int) -> Request:
    records = [
        {"userId": f"c{client}-r{n}-u{i}", "planTier": f"tier-{n}", "visits": str(i)}
        for i in range(RECORDS_PER_REQUEST)
    ]
    return Request(key=f"client{client}-request{n}", records=records)


def _send(http: httpx.Client, request: Request, integration_token: str) -> None:
    try:
        response = http.post(
            "/v1/end-users", json=request.payload(integration_token), headers={"Idempotency-Key": request.key}
        )
    except httpx.TransportError:
        request.outcome = "unknown"  # sent, no answer: the crash
        return
    if response.status_code == 202:
        request.outcome, request.batch_id = "acked", response.json()["batch_id"]
    else:
        request.outcome = "failed"


def _stream(url: str, bearer: str, token: str, client: Client, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {bearer}"}, timeout=10) as http:
        n = 0
        while not stop.is_set():
            request = _make_request(client.number, n)
            client.requests.append(request)
            _send(http, request, token)
            if request.outcome == "unknown":
                return
            n += 1


@pytest.fixture
def crash_env(tmp_path: Path):
    catalog = write_catalog(tmp_path)
    tokens = issue_tokens(catalog)
    home = tmp_path / "dagster_home"
    home.mkdir()
    return catalog, tokens, home


def test_sigkill_mid_stream_loses_no_acknowledged_record_and_applies_nothing_else(crash_env) -> None:
    catalog, tokens, home = crash_env
    token = tokens.integration["web"]
    server = ApiServer(catalog, home).start()
    clients = [Client(n) for n in range(CLIENTS)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_stream, args=(server.url, tokens.bearer, token, c, stop)) for c in clients
    ]

    # A request whose body is half sent when the process dies: none of it may be applied.
    half_sent = threading.Event()
    release = threading.Event()
    partial_records = [{"userId": f"partial-{i}", "planTier": "never"} for i in range(20)]
    partial_body = json.dumps({"integration_token": token, "data": partial_records}).encode()

    def slow_body() -> Iterator[bytes]:
        yield partial_body[: len(partial_body) // 2]
        half_sent.set()
        release.wait(15)
        yield partial_body[len(partial_body) // 2 :]

    def send_partial() -> None:
        try:
            httpx.post(f"{server.url}/v1/end-users", content=slow_body(), timeout=15,
                       headers={"Authorization": f"Bearer {tokens.bearer}"})  # fmt: skip
        except httpx.TransportError:
            pass

    partial = threading.Thread(target=send_partial)
    partial.start()
    for thread in threads:
        thread.start()
    assert half_sent.wait(10)
    deadline = time.monotonic() + 20
    while sum(r.outcome == "acked" for c in clients for r in c.requests) < 30:  # mid-stream
        assert time.monotonic() < deadline, "the server acknowledged too little before the kill"
        time.sleep(0.01)
    server.kill()
    stop.set()
    release.set()
    for thread in [*threads, partial]:
        thread.join(20)

    requests = [r for c in clients for r in c.requests]
    acked_before = [r for r in requests if r.outcome == "acked"]
    in_flight = [r for r in requests if r.outcome == "unknown"]
    assert acked_before and not [r for r in requests if r.outcome == "failed"]

    # Restart; the client retries what got no answer, with the same Idempotency-Key.
    server = ApiServer(catalog, home).start()
    try:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {tokens.bearer}"}, timeout=10
        ) as http:
            for request in in_flight:
                _send(http, request, token)
                assert request.outcome == "acked"
            # A retry of an acknowledged request is answered from the first answer, not landed again.
            replay = Request(acked_before[0].key, acked_before[0].records)
            _send(http, replay, token)
            assert replay.batch_id == acked_before[0].batch_id
    finally:
        server.stop()

    # The sensor sees the landed batches and asks for a run; the run applies them.
    definitions = build_definitions(catalog)
    sensor = definitions.resolve_sensor_def("web_sensor")
    with dg.DagsterInstance.ephemeral() as instance:
        result = sensor(dg.build_sensor_context(instance=instance))
        assert len(result.run_requests) == 1
        job = definitions.resolve_job_def("web_job")
        assert job.execute_in_process(instance=instance, tags=result.run_requests[0].tags).success

    acked = [r for r in requests if r.outcome == "acked"]
    expected = {rec["userId"]: rec["planTier"] for r in acked for rec in r.records}
    stored = dict(query(catalog, "SELECT user_id, plan_tier FROM attributes_web"))
    assert stored == expected  # every acknowledged record, and nothing else (no partial request)
    batches = {r.batch_id for r in acked}
    processed = query(catalog, "SELECT key, status FROM processed_files WHERE integration = 'web'")
    assert sorted(key for key, _ in processed) == sorted(batches)  # each batch applied exactly once
    assert {status for _, status in processed} == {"success"}
    runs = query(catalog, "SELECT status, details FROM integration_runs WHERE integration = 'web'")
    assert sorted(b for _, details in runs for b in json.loads(details)["batches"]) == sorted(batches)
    pending = catalog.landing_path / "web" / "pending"
    assert not list(pending.glob("*.ndjson"))
