"""Two worker hosts on one PostgreSQL + S3 deployment, under load, and one of them killed.

Each host is a folder of its own (its copy of the catalog, its DAGSTER_HOME) whose processes
share nothing local with the other's: only PostgreSQL (the lake's catalog, the tokens, Dagster's
storage) and the S3 server (the lake's data, the inbound files, the API landing). At the same
time: Dagster runs of three integrations (crm on host A, billing on host B, web on host A), an
API replica on each host taking keyed batches (some keys sent to both replicas at once), and an
analyst's query loop. Host B is SIGKILLed mid-run (its run and its replica), then restarted.
Afterwards nothing acknowledged is lost, nothing is applied twice, and the store equals a serial
run of the same inputs on a fresh lake.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from integration_hub.core.catalog import load_catalog
from integration_hub.core.warehouse import Lake, open_reader
from integration_hub_tests.api_support import ApiServer
from integration_hub_tests.fakes.moto_server import MotoServer
from integration_hub_tests.fakes.postgres_server import PostgresServer
from integration_hub_tests.scale_out_support import (
    HEADER,
    LAKE_BUCKET,
    ScaleOut,
    dagster_on_postgres,
    integration,
)

WEB: dict[str, Any] = {
    "name": "web", "type": "api", "system": "main_site", "environment": "production", "user_id_property": "userId",
    "properties": [{"property": "planTier", "name": "plan_tier", "type": "string"}],
}  # fmt: skip
ATTRIBUTES = ["crm_plan", "crm_tickets", "billing_plan", "billing_tickets", "plan_tier"]
BIG_BILLING_ROWS = 200_000  # long enough (seconds) to be killed mid-run
REQUESTS, RECORDS_PER_REQUEST = 24, 50
CLAIM_TIMEOUT = 10  # the replicas' --claim-timeout: a claim of the killed replica is taken over sooner than 60 s


def deployment(scale_out: ScaleOut) -> None:
    """Three integrations, the API landing in S3, Dagster on PostgreSQL."""
    scale_out.document["integrations"] = [integration("crm", "crm"), integration("billing", "billing"), WEB]
    scale_out.document["landing"] = {"connection": "lake_bucket", "prefix": "api_landing/"}
    scale_out.catalog_file.write_text(yaml.safe_dump(scale_out.document, sort_keys=False))
    dagster_on_postgres(scale_out)


def put_inputs(scale_out: ScaleOut) -> None:
    for n in range(3):
        scale_out.put(f"crm/{n}.csv", HEADER + "".join(f"u{i}@x.com,crm{n},{i}\n" for i in range(n, 3000, 3)))
    rows = "".join(f"u{i}@x.com,bill{i % 7},{i % 100}\n" for i in range(BIG_BILLING_ROWS))
    scale_out.put("billing/big.csv", HEADER + rows)


def records(request: int) -> list[dict[str, str]]:
    """Each request its own users: the final state does not depend on the order batches apply in."""
    return [{"userId": f"u{request * RECORDS_PER_REQUEST + j}@x.com", "planTier": f"t{request}"} for j in range(RECORDS_PER_REQUEST)]


class Host:
    """A worker machine: its own folder, catalog copy and DAGSTER_HOME; PostgreSQL and S3 shared."""

    def __init__(self, name: str, scale_out: ScaleOut) -> None:
        self.name = name
        self.root = scale_out.root.parent / f"host-{name}"
        (self.root / "dagster_home").mkdir(parents=True)
        catalog_file = self.root / "integrations.yaml"
        catalog_file.write_text(scale_out.catalog_file.read_text())
        dagster_yaml = scale_out.root / "dagster_home" / "dagster.yaml"
        (self.root / "dagster_home" / "dagster.yaml").write_text(dagster_yaml.read_text())
        self.env = {**scale_out.env, "DAGSTER_HOME": str(self.root / "dagster_home"), "INTEGRATION_HUB_CATALOG": str(catalog_file)}
        self.catalog = load_catalog(catalog_file)
        self.processes: list[subprocess.Popen[str]] = []
        self.replica = ApiServer(
            self.catalog, self.root / "dagster_home", "--claim-timeout", str(CLAIM_TIMEOUT), log=self.root / "api.log"
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "integration_hub.cli.main", *args], cwd=self.root, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)
        return process

    def run(self, *args: str) -> str:
        process = self.start(*args)
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 0, f"host {self.name}: {' '.join(args)}: {output}"
        return output

    def log_tail(self, lines: int = 15) -> str:
        """The end of the host's API replica log, where a failed request's traceback goes."""
        log = self.root / "api.log"
        text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
        return "\n".join([f"host {self.name} api.log:", *text])

    def kill(self) -> None:
        """SIGKILL every process of the host: runs and the API replica, with no chance to clean up."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self.replica.process is not None and self.replica.process.poll() is None:
            self.replica.kill()


class Client:
    """A careful API client: every request has an Idempotency-Key; a failed replica's request is sent
    again to the other with the same key; some requests go to both replicas at once."""

    def __init__(self, bearer: str, integration_token: str, replicas: list[ApiServer]) -> None:
        self.headers = {"Authorization": f"Bearer {bearer}"}
        self.integration_token, self.replicas = integration_token, replicas
        self.acknowledged: dict[int, str] = {}  # request -> batch id
        self.failure = ""  # why send_all stopped early, for the test's assertion
        self.events: list[str] = []  # every answer but a 202, for that assertion's message

    def _post(self, replica: ApiServer, request: int) -> httpx.Response | None:
        body = {"integration_token": self.integration_token, "data": records(request)}
        headers = {**self.headers, "Idempotency-Key": f"request-{request}"}
        try:
            answer = httpx.post(f"{replica.url}/v1/end-users", json=body, headers=headers, timeout=10)
        except httpx.HTTPError as exc:
            self.events.append(f"{time.monotonic():.2f} request {request} to {replica.url}: {exc!r}")
            return None  # the replica is gone
        if answer.status_code != 202:
            self.events.append(f"{time.monotonic():.2f} request {request} to {replica.url}: {answer.status_code} {answer.text}")
        return answer

    def send(self, request: int, first: int) -> str:
        deadline = time.monotonic() + 120  # a dead replica's claim on the key is taken over after CLAIM_TIMEOUT
        attempt = first
        while time.monotonic() < deadline:
            answer = self._post(self.replicas[attempt % 2], request)
            if answer is not None and answer.status_code == 202:
                return answer.json()["batch_id"]
            if answer is not None and answer.status_code not in (409, 503):
                raise AssertionError(f"request {request}: {answer.status_code} {answer.text}")
            if answer is None:
                attempt += 1  # fail over to the other replica
            time.sleep(0.2)
        raise AssertionError(f"request {request} was never acknowledged")

    def send_all(self) -> None:
        try:
            for request in range(REQUESTS):
                if request % 4 == 0:  # the same key to both replicas at the same time
                    with ThreadPoolExecutor(2) as pool:
                        ids = set(pool.map(self.send, [request, request], [0, 1]))
                    assert len(ids) == 1, f"request {request}: one key, two batches {ids}"
                    self.acknowledged[request] = ids.pop()
                else:
                    self.acknowledged[request] = self.send(request, request)
                time.sleep(0.05)
        except Exception as exc:
            self.failure = "\n".join([f"{type(exc).__name__}: {exc}", *self.events[-30:]])
            raise


class Analyst(threading.Thread):
    """Counts users in a loop from a read-only connection, as a BI tool would."""

    def __init__(self, lake: Lake) -> None:
        super().__init__(daemon=True)
        self.lake, self.counts, self.errors = lake, [], []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with open_reader(self.lake) as con:
                    if con is not None:
                        self.counts.append(con.execute("SELECT count(*) FROM user_profiles").fetchone()[0])
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                if "user_profiles" not in str(exc):  # before the first run made the view
                    self.errors.append(str(exc).splitlines()[0])
            time.sleep(0.2)


def query(scale_out: ScaleOut, sql: str) -> list[dict[str, Any]]:
    """What an analyst's read-only connection to the lake answers, as dicts."""
    with open_reader(Lake.of(load_catalog(scale_out.catalog_file)), private=True) as con:
        assert con is not None
        result = con.execute(sql)
        columns = [d[0] for d in result.description]
        return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


def final_state(scale_out: ScaleOut) -> list[tuple[Any, ...]]:
    columns = ", ".join(["user_id", *ATTRIBUTES])
    with open_reader(Lake.of(load_catalog(scale_out.catalog_file)), private=True) as con:
        assert con is not None
        return con.execute(f"SELECT {columns} FROM user_profiles ORDER BY user_id").fetchall()


def tokens(scale_out: ScaleOut) -> tuple[str, str]:
    """A bearer token and the web integration's token, in the catalog database."""
    from integration_hub.api.tokens import token_store

    with token_store(load_catalog(scale_out.catalog_file)) as store:
        return store.create_bearer("acme"), store.issue_integration_token("web")


def run_serially(scale_out: ScaleOut, *names: str) -> None:
    """Each integration's job in this process, one after the other."""
    import dagster as dg

    from integration_hub.definitions import build_definitions

    definitions = build_definitions(load_catalog(scale_out.catalog_file))
    with dg.DagsterInstance.ephemeral() as instance:
        for name in names:
            assert definitions.resolve_job_def(f"{name}_job").execute_in_process(instance=instance).success


def billing_run_started(scale_out: ScaleOut) -> bool:
    import psycopg2

    with psycopg2.connect(scale_out.env["DAGSTER_PG_URL"].replace("+psycopg2", "")) as db, db.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs WHERE pipeline_name = 'billing_job' AND status = 'STARTED'")
        return cursor.fetchone()[0] > 0


def test_two_hosts_under_load_one_killed_mid_run_lose_nothing_and_apply_nothing_twice(
    scale_out: ScaleOut, postgres: PostgresServer, moto_server: MotoServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployment(scale_out)
    monkeypatch.setenv("DAGSTER_PG_URL", scale_out.env["DAGSTER_PG_URL"])  # the replicas' Dagster instance
    put_inputs(scale_out)
    bearer, integration_token = tokens(scale_out)
    host_a, host_b = Host("a", scale_out), Host("b", scale_out)
    analyst = Analyst(Lake.of(host_a.catalog))
    try:
        with ThreadPoolExecutor(2) as pool:  # both replicas start at once
            list(pool.map(ApiServer.start, [host_a.replica, host_b.replica]))
        client = Client(bearer, integration_token, [host_a.replica, host_b.replica])
        analyst.start()
        billing = host_b.start("run", "billing")
        crm = host_a.start("run", "crm")
        sender = threading.Thread(target=client.send_all)
        sender.start()
        deadline = time.monotonic() + 120
        while not billing_run_started(scale_out):
            assert billing.poll() is None and time.monotonic() < deadline, billing.communicate()[0]
            time.sleep(0.1)
        time.sleep(1.5)  # into the apply: reading, casting, writing Parquet to S3
        assert billing.poll() is None, "the billing run ended before the kill: make its file larger"
        client.events.append(f"{time.monotonic():.2f} host b killed")
        host_b.kill()  # the whole host: its run and its API replica
        sender.join(timeout=300)
        assert not sender.is_alive() and len(client.acknowledged) == REQUESTS, "\n".join(
            [client.failure, *(host.log_tail() for host in (host_a, host_b))]
        )
        assert crm.wait(timeout=300) == 0, crm.communicate()[0]
        host_a.run("run", "web")

        # Host B comes back: its run starts again from the file still pending in S3; host A
        # applies anything landed while its first web run went.
        host_b = Host("b2", scale_out)
        rerun, web = host_b.start("run", "billing"), host_a.start("run", "web")
        for process in (rerun, web):
            assert process.wait(timeout=300) == 0, process.communicate()[0]
    finally:
        analyst.stop.set()
        host_a.kill()
        host_b.kill()
    analyst.join(timeout=30)

    assert analyst.errors == [], analyst.errors
    assert len(analyst.counts) > 5 and analyst.counts == sorted(analyst.counts), "users only ever appear"
    applied = query(scale_out,
        "SELECT integration, key, count(*) AS times, min(status) AS status FROM processed_files "
        "GROUP BY integration, key ORDER BY integration, key"
    )
    batches = {row["key"]: row for row in applied if row["integration"] == "web"}
    assert sorted(batches) == sorted(client.acknowledged.values()), "every acknowledged batch, and only those"
    assert all(row["times"] == 1 and row["status"] == "success" for row in applied), applied
    assert [row["key"].rsplit("/", 1)[-1] for row in applied if row["integration"] == "billing"] == ["big.csv"]
    pending = scale_out.client.list_objects_v2(Bucket=LAKE_BUCKET, Prefix=f"{scale_out.prefix}/api_landing/web/pending/")
    left = [item["Key"].rsplit("/", 1)[-1] for item in pending.get("Contents", [])]
    # A batch is its data object. The killed replica may have left the status object of a batch
    # whose data it never wrote: never acknowledged, never a batch, pruned as an orphan later.
    assert [name for name in left if not name.endswith(".json")] == [], "no batch left pending"
    assert not {name.removesuffix(".json") for name in left} & set(client.acknowledged.values()), left

    # The same inputs, one step after the other, on a fresh lake.
    (tmp_path / "serial").mkdir()
    serial = ScaleOut(tmp_path / "serial", postgres, moto_server)  # its own database and prefixes
    deployment(serial)
    put_inputs(serial)
    run_serially(serial, "crm", "billing")
    bearer, integration_token = tokens(serial)
    with ApiServer(load_catalog(serial.catalog_file), serial.root / "dagster_home") as replica:
        one = Client(bearer, integration_token, [replica, replica])
        for request in range(REQUESTS):
            one.send(request, 0)
    run_serially(serial, "web")
    assert final_state(scale_out) == final_state(serial)


def test_the_daemons_run_queue_on_postgres_takes_one_run_per_integration_and_several_across(
    scale_out: ScaleOut, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dagster-daemon` on the PostgreSQL instance, its sensors starting the runs: a second crm run,
    requested while the first goes, waits in the queue for it; billing's run goes at the same time.

    The test holds crm's integration lock (the advisory lock its runs take) until billing's run has
    finished, so the first crm run is still going then however fast the runs are."""
    import psycopg2

    for entry in scale_out.document["integrations"]:
        entry["sensor_interval_seconds"] = 5
        # Only the sensors start runs here: the schedule (every 15 min by default) would add a
        # run of its own when the test spans a quarter hour.
        entry["schedule"] = "0 0 1 1 *"
    scale_out.catalog_file.write_text(yaml.safe_dump(scale_out.document, sort_keys=False))
    dagster_on_postgres(scale_out)
    dagster_url = scale_out.env["DAGSTER_PG_URL"].replace("+psycopg2", "")

    def rows(tag: str) -> str:
        return HEADER + "".join(f"u{i}@x.com,{tag},{i % 100}\n" for i in range(80_000))

    def runs() -> list[tuple[Any, ...]]:
        with psycopg2.connect(dagster_url) as db, db.cursor() as cursor:
            cursor.execute("SELECT to_regclass('runs') IS NOT NULL")
            if not cursor.fetchone()[0]:
                return []  # the daemon has not made Dagster's tables yet
            cursor.execute(
                "SELECT pipeline_name, status, EXTRACT(EPOCH FROM create_timestamp), start_time, end_time FROM runs "
                "WHERE pipeline_name IN ('crm_job', 'billing_job') ORDER BY create_timestamp"
            )
            return cursor.fetchall()

    def started(job: str) -> bool:
        return any(run[0] == job and run[3] is not None for run in runs())

    def finished(job: str) -> bool:
        return any(run[0] == job and run[1] in ("SUCCESS", "FAILURE", "CANCELED") for run in runs())

    crm_lock = psycopg2.connect(scale_out.postgres.dsn(scale_out.database))
    crm_lock.autocommit = True
    with crm_lock.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(hashtext('integration_hub'), hashtext('integration:crm'))")
    scale_out.put("crm/a.csv", rows("a"))
    workspace = scale_out.root / "workspace.yaml"
    module = {"module_name": "integration_hub.definitions", "location_name": "integration_hub"}
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": {**module, "working_directory": str(scale_out.root)}}]}))
    with open(scale_out.root.parent / "daemon.log", "wb") as log:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
            cwd=scale_out.root, env=scale_out.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not started("crm_job"):
            assert daemon.poll() is None and time.monotonic() < deadline, "the sensor started no crm run"
            time.sleep(0.2)
        scale_out.put("crm/b.csv", rows("b"))  # the next tick asks for a second crm run
        scale_out.put("billing/a.csv", rows("bill"))  # and billing's sensor for a run of its own
        while not finished("billing_job"):
            assert daemon.poll() is None and time.monotonic() < deadline, f"billing's run did not finish: {runs()}"
            time.sleep(0.5)
        crm_lock.close()  # the first crm run goes on
        while True:
            found = runs()
            done = [run for run in found if run[1] in ("SUCCESS", "FAILURE", "CANCELED")]
            if len([r for r in done if r[0] == "crm_job"]) >= 2 and any(r[0] == "billing_job" for r in done):
                break
            assert daemon.poll() is None and time.monotonic() < deadline, f"the runs did not finish: {found}"
            time.sleep(0.5)
    finally:
        crm_lock.close()
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
    found = runs()
    assert all(run[1] == "SUCCESS" for run in found), found
    (first, second, *_), billing = [r for r in found if r[0] == "crm_job"], [r for r in found if r[0] == "billing_job"][0]
    assert second[2] < first[4], "the second crm run was asked for while the first went"
    assert second[3] >= first[4], "... and started only once it had ended"
    assert max(first[3], billing[3]) < min(first[4], billing[4]), "billing's run went at the same time as crm's"
    counts = query(scale_out, "SELECT count(*) AS users, count(*) FILTER (WHERE crm_plan = 'b') AS latest FROM attributes_crm")
    assert counts == [{"users": 80_000, "latest": 80_000}]
