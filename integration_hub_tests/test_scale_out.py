"""The scale-out warehouse: a DuckLake whose catalog is PostgreSQL and whose data is in S3.

A real PostgreSQL server (a temporary cluster, password auth over TCP) and a moto S3 server over
HTTP; every command runs as its own process, as it would on another machine, and nothing of the
lake is on local disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration_hub.core.catalog import load_catalog
from integration_hub.core.warehouse import Lake, LakeError, WarehouseBusyError, open_reader
from integration_hub_tests.fakes.moto_server import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY
from integration_hub_tests.scale_out_support import (
    HEADER,
    LAKE_BUCKET,
    PASSWORD_VARIABLE,
    ScaleOut,
    dagster_on_postgres,
)


def test_a_csv_run_writes_the_lake_into_postgres_and_s3_and_nothing_on_local_disk(scale_out: ScaleOut) -> None:
    scale_out.put("crm/a.csv", HEADER + "a@x.com,gold,3\nb@x.com,silver,1\n")
    scale_out.command("run", "crm")
    rows = scale_out.sql("SELECT user_id, crm_plan, crm_tickets FROM user_profiles ORDER BY user_id")
    assert rows == [
        {"user_id": "a@x.com", "crm_plan": "gold", "crm_tickets": 3.0},
        {"user_id": "b@x.com", "crm_plan": "silver", "crm_tickets": 1.0},
    ]
    assert any(key.endswith(".parquet") for key in scale_out.lake_objects()), "the rows are Parquet files in S3"
    assert scale_out.local_files() == set(), "no lake file, lock file or folder on this machine"
    # The catalog tables are in PostgreSQL.
    import psycopg2

    with psycopg2.connect(scale_out.postgres.dsn(scale_out.database)) as db, db.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ducklake_snapshot")
        assert cursor.fetchone()[0] >= 2

    # A second file updates one user and adds one; the first run's users stay.
    scale_out.put("crm/b.csv", HEADER + "b@x.com,gold,\nc@x.com,bronze,7\n")
    scale_out.command("run", "crm")
    rows = scale_out.sql("SELECT user_id, crm_plan FROM attributes_crm ORDER BY user_id")
    assert [(r["user_id"], r["crm_plan"]) for r in rows] == [("a@x.com", "gold"), ("b@x.com", "gold"), ("c@x.com", "bronze")]
    history = json.loads(scale_out.command("history", "b@x.com", "--json").stdout)
    plan = [(c["value"], c["source"].rsplit("/", 1)[-1]) for c in history if c["attribute"] == "crm_plan"]
    assert plan == [("silver", "a.csv"), ("gold", "b.csv")]


def test_the_attach_statements_open_the_lake_from_a_plain_duckdb_without_printing_a_secret(scale_out: ScaleOut) -> None:
    scale_out.put("crm/a.csv", HEADER + "a@x.com,gold,3\n")
    scale_out.command("run", "crm")
    printed = scale_out.command("sql", "--attach").stdout
    assert "password=" not in printed and "KEY_ID '" not in printed and FAKE_SECRET_ACCESS_KEY not in printed, printed
    from integration_hub.core.warehouse import extension_directory

    script = textwrap.dedent(
        """
        import sys, duckdb
        con = duckdb.connect(config={"extension_directory": sys.argv[1]} if sys.argv[1] else {})
        for statement in sys.stdin.read().splitlines():
            if statement.strip() and not statement.startswith("--"):
                con.execute(statement)
        print(con.execute("SELECT user_id, crm_plan FROM attributes_crm").fetchall())
        """
    )
    env = {
        **scale_out.env, "PGPASSWORD": scale_out.postgres.password,
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
    }
    done = subprocess.run(
        [sys.executable, "-c", script, extension_directory() or ""], input=printed, capture_output=True, text=True,
        env=env, cwd=scale_out.root, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('a@x.com', 'gold')]"


def test_runs_of_two_integrations_commit_from_separate_processes(scale_out: ScaleOut) -> None:
    for n in range(3):
        scale_out.put(f"crm/{n}.csv", HEADER + "".join(f"u{i}@x.com,crm{n},{i}\n" for i in range(n, 200, 3)))
        scale_out.put(f"billing/{n}.csv", HEADER + "".join(f"u{i}@x.com,bill{n},{i}\n" for i in range(n, 300, 3)))
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "integration_hub.cli.main", "run", name], cwd=scale_out.root, env=scale_out.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name in ("crm", "billing")
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    counts = scale_out.sql(
        "SELECT (SELECT count(*) FROM attributes_crm) AS crm, (SELECT count(*) FROM attributes_billing) AS billing, "
        "(SELECT count(*) FROM user_profiles) AS users, "
        "(SELECT count(*) FROM processed_files WHERE status = 'success') AS files"
    )
    assert counts == [{"crm": 200, "billing": 300, "users": 300, "files": 6}]


def test_a_run_holds_its_integration_across_processes_through_the_catalog_database(scale_out: ScaleOut) -> None:
    """Two runs of one integration take turns with no lock file: an advisory lock in PostgreSQL."""
    lake = Lake.of(load_catalog(scale_out.catalog_file))
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from integration_hub.core.catalog import load_catalog; "
            "from integration_hub.core.warehouse import Lake, integration_lock\n"
            "with integration_lock(Lake.of(load_catalog(sys.argv[1])), 'crm'):\n"
            "    print('held', flush=True); time.sleep(60)",
            str(scale_out.catalog_file),
        ],
        env=scale_out.env, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(WarehouseBusyError, match="integration crm has been busy"):
            with lake.lock("integration:crm", "integration crm", timeout=1.0):
                pass
        assert time.monotonic() - started >= 0.9
        with lake.lock("integration:billing", "integration billing", timeout=1.0):
            pass  # another integration is not held
    finally:
        holder.kill()  # a holder that dies releases the lock
        holder.wait()
    with lake.lock("integration:crm", "integration crm", timeout=10.0):
        pass
    assert scale_out.local_files() == set()


def test_a_wrong_password_is_one_line_that_names_the_catalog_and_not_the_password(
    scale_out: ScaleOut, monkeypatch: pytest.MonkeyPatch
) -> None:
    scale_out.put("crm/a.csv", HEADER + "a@x.com,gold,3\n")
    scale_out.env[PASSWORD_VARIABLE] = "not-the-password"
    monkeypatch.setenv(PASSWORD_VARIABLE, "not-the-password")
    done = scale_out.command("sql", "SELECT 1", check=False)
    assert done.returncode != 0
    assert "not-the-password" not in done.stdout + done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and f"@127.0.0.1:{scale_out.postgres.port}/{scale_out.database}" in line, line
    assert "password" in line.lower() and "Traceback" not in line
    lake = Lake.of(load_catalog(scale_out.catalog_file))
    with pytest.raises(LakeError) as failure:
        with open_reader(lake):
            pass
    assert "not-the-password" not in str(failure.value)


def test_a_postgres_catalog_needs_its_data_in_s3(scale_out: ScaleOut) -> None:
    document = dict(scale_out.document)
    document["warehouse"] = {**document["warehouse"], "data_path": "data/lake/"}
    document["warehouse"].pop("data_connection")
    scale_out.catalog_file.write_text(yaml.safe_dump(document))
    done = scale_out.command("integrations", check=False)
    assert done.returncode != 0
    assert "data_path" in done.stderr and "s3://BUCKET/PREFIX/" in done.stderr, done.stderr


def test_check_lists_where_state_lives_and_fails_on_a_local_dagster_instance(scale_out: ScaleOut) -> None:
    done = scale_out.command("check", "--json", check=False)
    report = json.loads(done.stdout)
    places = {place["state"]: place for place in report["state"]}
    assert places["warehouse catalog"]["shared"] and places["warehouse data"]["shared"]
    assert places["warehouse data"]["location"] == f"s3://{LAKE_BUCKET}/{scale_out.prefix}/lake/"
    instance = places["Dagster instance (runs, schedules, toggles)"]
    assert not instance["shared"] and "dagster-postgres" in instance["problem"]
    assert done.returncode == 1 and report["ok"] is False

    dagster_on_postgres(scale_out)
    done = scale_out.command("check")
    assert "FAIL" not in done.stdout and "Dagster instance" in done.stdout, done.stdout
    assert scale_out.postgres.password not in done.stdout


def test_toggles_the_management_table_and_runs_work_with_dagster_on_postgres(scale_out: ScaleOut) -> None:
    dagster_on_postgres(scale_out)
    scale_out.put("crm/a.csv", HEADER + "a@x.com,gold,3\n")
    scale_out.command("disable", "crm")
    table = {row["name"]: row for row in json.loads(scale_out.command("integrations", "--json").stdout)}
    assert table["crm"]["enabled"] is False and table["billing"]["enabled"] is True
    scale_out.command("enable", "crm")
    scale_out.command("run", "crm")
    table = {row["name"]: row for row in json.loads(scale_out.command("integrations", "--json").stdout)}
    assert table["crm"]["enabled"] is True and table["crm"]["last_run_status"] == "success", table["crm"]
    assert scale_out.local_files() == set()
    home = {path.name for path in (scale_out.root / "dagster_home").iterdir()}
    assert home == {"dagster.yaml"}, f"no lock file, no SQLite storage beside Dagster's config: {home}"
    import psycopg2

    with psycopg2.connect(scale_out.env["DAGSTER_PG_URL"].replace("+psycopg2", "")) as db, db.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs")
        assert cursor.fetchone()[0] == 1, "the run is recorded in PostgreSQL"


API_INTEGRATION: dict[str, Any] = {
    "name": "web", "type": "api", "system": "main_site", "environment": "production", "user_id_property": "userId",
    "properties": [{"property": "planTier", "name": "plan_tier", "type": "string"}],
}


def test_api_replicas_share_batches_keys_and_tokens_through_s3_and_postgres(scale_out: ScaleOut) -> None:
    """Two `integration-hub api` processes: batches land in S3, an Idempotency-Key sent to both at
    once is one batch, a run from a third process applies them, and a revoked token is refused by both."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import psycopg2

    from integration_hub_tests.api_support import ApiServer

    scale_out.document["integrations"].append(API_INTEGRATION)
    scale_out.document["landing"] = {"connection": "lake_bucket", "prefix": "api_landing/"}
    scale_out.catalog_file.write_text(yaml.safe_dump(scale_out.document, sort_keys=False))
    bearer = json.loads(scale_out.command("tokens", "create", "acme", "--json").stdout)["token"]
    integration_token = json.loads(scale_out.command("endpoint", "web", "--json").stdout)["integration_token"]
    with psycopg2.connect(scale_out.postgres.dsn(scale_out.database)) as db, db.cursor() as cursor:
        cursor.execute("SELECT name, token_sha256 FROM integration_hub.bearer_tokens")
        (name, stored), = cursor.fetchall()
        cursor.execute("SELECT integration FROM integration_hub.integration_tokens")
        assert cursor.fetchall() == [("web",)]
    assert name == "acme" and bearer not in stored and len(stored) == 64, "stored hashed"

    catalog = load_catalog(scale_out.catalog_file)
    dagster_home = scale_out.root / "dagster_home"
    logs = Path(scale_out.root.parent / f"{scale_out.root.name}-logs")
    logs.mkdir()
    replicas = [ApiServer(catalog, dagster_home, log=logs / f"replica-{n}.log") for n in (1, 2)]
    headers = {"Authorization": f"Bearer {bearer}"}

    def post(url: str, records: list[dict[str, Any]], key: str | None = None) -> httpx.Response:
        extra = {"Idempotency-Key": key} if key else {}
        body = {"integration_token": integration_token, "data": records}
        return httpx.post(f"{url}/v1/end-users", json=body, headers={**headers, **extra}, timeout=10)

    def post_until_answered(url: str, key: str) -> httpx.Response:
        while True:  # 409 while the other replica holds the key
            answer = post(url, [{"userId": "u3", "planTier": "bronze"}], key)
            if answer.status_code != 409:
                return answer
            time.sleep(0.2)

    try:
        for replica in replicas:
            replica.start()
        one, two = (replica.url for replica in replicas)
        first = post(one, [{"userId": "u1", "planTier": "gold"}, {"userId": "u2", "planTier": "free"}])
        second = post(two, [{"userId": "u1", "planTier": "platinum"}])
        assert first.status_code == second.status_code == 202, first.text + second.text
        with ThreadPoolExecutor(2) as pool:
            keyed = list(pool.map(lambda url: post_until_answered(url, "order-42"), [one, two]))
        assert [a.status_code for a in keyed] == [202, 202], [a.text for a in keyed]
        assert keyed[0].json()["batch_id"] == keyed[1].json()["batch_id"], "one batch for one key"
        assert sorted(a.headers.get("Idempotent-Replayed", "") for a in keyed) == ["", "true"]
        pending = scale_out.client.list_objects_v2(
            Bucket=LAKE_BUCKET, Prefix=f"{scale_out.prefix}/api_landing/web/pending/"
        )
        assert len([o for o in pending["Contents"] if o["Key"].endswith(".ndjson")]) == 3

        scale_out.command("run", "web")  # a worker: its own process, reading the batches from S3
        rows = scale_out.sql("SELECT user_id, plan_tier FROM user_profiles ORDER BY user_id")
        assert rows == [
            {"user_id": "u1", "plan_tier": "platinum"},
            {"user_id": "u2", "plan_tier": "free"},
            {"user_id": "u3", "plan_tier": "bronze"},
        ]
        status = httpx.get(f"{one}/v1/batches/{second.json()['batch_id']}", headers=headers, timeout=10).json()
        assert status["status"] == "applied" and status["rows_applied"] == 1, status
        assert scale_out.local_files() == set(), "no batch, token or lock on this machine's disk"

        scale_out.command("tokens", "revoke", "acme")
        revoked_at = time.monotonic()
        for replica in replicas:
            while True:
                answer = post(replica.url, [{"userId": "u1"}])
                if answer.status_code == 401 or time.monotonic() - revoked_at > 10:
                    break
                time.sleep(0.2)
            assert answer.status_code == 401, f"{replica.url} still accepts a revoked token: {answer.text}"
    finally:
        for replica in replicas:
            replica.stop()

    report = json.loads(scale_out.command("check", "--json", check=False).stdout)
    places = {p["state"]: p for p in report["state"]}
    assert places["API tokens (hashed)"]["shared"] and places["API tokens (hashed)"]["problem"] is None
    landing = places["API landing (accepted batches)"]
    assert landing["shared"] and landing["location"] == f"s3://{LAKE_BUCKET}/{scale_out.prefix}/api_landing/"


def test_a_local_api_landing_with_a_postgres_catalog_fails_the_check_with_the_setting(scale_out: ScaleOut) -> None:
    scale_out.document["integrations"].append(API_INTEGRATION)
    scale_out.catalog_file.write_text(yaml.safe_dump(scale_out.document, sort_keys=False))
    done = scale_out.command("check", "--json", check=False)
    landing = {p["state"]: p for p in json.loads(done.stdout)["state"]}["API landing (accepted batches)"]
    assert done.returncode == 1 and not landing["shared"]
    assert "landing: {connection:" in landing["problem"]


def test_a_large_source_rewrite_and_maintenance_work_on_the_s3_lake(
    scale_out: ScaleOut, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rewrite of a large source (new Parquet files in S3, then a swap) and warehouse maintenance
    (compaction, expiry, deleting unreferenced files), in-process on the PostgreSQL + S3 lake."""
    from integration_hub.core import ingest
    from integration_hub.core.maintenance import maintain_lake
    from integration_hub_tests.support import query, run_job

    catalog = load_catalog(scale_out.catalog_file)
    for n in range(3):  # small files: merged, one snapshot each
        scale_out.put(f"crm/{n}.csv", HEADER + f"u{n}@x.com,plan{n},{n}\n")
        assert run_job(catalog, "crm").success
    monkeypatch.setattr(ingest, "REWRITE_MIN_ROWS", 2)  # the next source of 2+ rows rewrites the table
    scale_out.put("crm/big.csv", HEADER + "u1@x.com,gold,10\nu9@x.com,pro,9\n")
    assert run_job(catalog, "crm").success
    expected = [("u0@x.com", "plan0"), ("u1@x.com", "gold"), ("u2@x.com", "plan2"), ("u9@x.com", "pro")]
    assert query(catalog, "SELECT user_id, crm_plan FROM attributes_crm ORDER BY user_id") == expected

    report = maintain_lake(Lake.of(catalog), retention_days=1, delete_immediately=True)
    assert report.before.files > report.after.files, report  # compacted, and replaced files deleted
    assert report.files_deleted > 0
    assert query(catalog, "SELECT user_id, crm_plan FROM attributes_crm ORDER BY user_id") == expected
    live = {key.rsplit("/", 1)[-1] for key in scale_out.lake_objects()}
    assert len(live) == report.after.files, "what is left in the bucket is what the lake reads"
    assert scale_out.local_files() == set()


def test_salesforce_credentials_live_encrypted_in_the_catalog_database(
    scale_out: ScaleOut, fake: Any, salesforce_environment: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`salesforce connect` on one machine stores the refresh token where a run on any machine finds it."""
    import psycopg2

    from integration_hub.cli.main import main
    from integration_hub.salesforce import auth
    from integration_hub_tests.api_support import free_port
    from integration_hub_tests.test_salesforce_auth import _approve
    from integration_hub_tests.test_salesforce_support import CLIENT_ID

    port = free_port()
    fake.register_oauth_client(CLIENT_ID, "s3cret", redirect_uris=[f"http://localhost:{port}/OauthRedirect"])
    scale_out.document["connections"].append({
        "name": "sf", "type": "salesforce", "environment": "sandbox", "login_url": fake.url, "client_id": CLIENT_ID,
        "client_secret": "s3cret", "ca_bundle": fake.ca_file, "callback_port": port, "timeout_seconds": 10,
    })
    scale_out.catalog_file.write_text(yaml.safe_dump(scale_out.document, sort_keys=False))
    monkeypatch.setattr(auth.webbrowser, "open", _approve(fake))
    path = str(scale_out.catalog_file)

    assert main(["salesforce", "connect", "sf", "--catalog", path]) == 0
    out = capsys.readouterr().out
    assert f"connected sf to {fake.url}" in out and scale_out.postgres.password not in out
    with psycopg2.connect(scale_out.postgres.dsn(scale_out.database)) as db, db.cursor() as cursor:
        cursor.execute("SELECT connection, encrypted FROM integration_hub.salesforce_credentials")
        (name, encrypted), = cursor.fetchall()
    stored = auth.token_store(load_catalog(path)).load("sf")
    assert name == "sf" and stored is not None and fake.is_token_valid(stored["refresh_token"])
    assert stored["refresh_token"].encode() not in bytes(encrypted), "stored encrypted"
    assert scale_out.local_files() == set(), "no credentials file on this machine"
    places = {p["state"]: p for p in json.loads(scale_out.command("check", "--json", check=False).stdout)["state"]}
    assert places["Salesforce credentials (encrypted)"]["shared"]

    assert main(["salesforce", "disconnect", "sf", "--catalog", path]) == 0
    assert "revoked at Salesforce and deleted" in capsys.readouterr().out
    assert not fake.is_token_valid(stored["refresh_token"])
    assert auth.token_store(load_catalog(path)).load("sf") is None


def test_migrate_fills_an_empty_scale_out_lake_and_refuses_a_second_time(scale_out: ScaleOut) -> None:
    from integration_hub_tests.test_migrate import OLD_TABLES, USERS, old_warehouse

    old = old_warehouse(scale_out.root.parent / "old.duckdb")
    done = scale_out.command("migrate", str(old), "--json")
    report = json.loads(done.stdout)
    assert [r["table"] for r in report] == OLD_TABLES and all(r["hash_ok"] is True for r in report)
    assert scale_out.sql("SELECT count(*) AS users FROM attributes_crm") == [{"users": USERS}]
    assert any(key.endswith(".parquet") for key in scale_out.lake_objects())
    again = scale_out.command("migrate", str(old), check=False)
    assert again.returncode != 0 and "already holds data" in again.stderr, again.stderr
    assert f"@127.0.0.1:{scale_out.postgres.port}/{scale_out.database}" in again.stderr
