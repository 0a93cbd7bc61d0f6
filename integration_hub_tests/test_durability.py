"""Crashes, concurrent writers and schema changes never lose or double data.

The crash and concurrency tests use real processes: `integration-hub run` as a subprocess,
SIGKILLed at chosen moments, or several started at once.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import pytest

from integration_hub.api.batches import BatchStore, new_batch_id
from integration_hub.api.validation import compile_mapping
from integration_hub.core import ingest
from integration_hub.core.catalog import Catalog, load_catalog
from integration_hub.core.maintenance import maintain_lake
from integration_hub.core.state import dagster_instance
from integration_hub.core.warehouse import (
    Lake,
    WarehouseBusyError,
    file_lock,
    memory_limit_bytes,
    open_reader,
    open_writer,
    transaction,
)
from integration_hub_tests.api_support import WEB_INTEGRATION, apply_batches
from integration_hub_tests.support import (
    CRM_INTEGRATION,
    Landing,
    local_landing_at,
    query,
    run_job,
    runs_of,
    step_error_text,
)

HEADER = "email,Plan Tier,tickets,is_active,signup,last_login\n"
BIG_ROWS = 300_000


def big_file(rows: int, plan: str) -> str:
    return HEADER + "".join(f"user{n}@example.com,{plan},{n},yes,2024-01-01,2024-01-01T00:00:00Z\n" for n in range(rows))


def write_lock(catalog: Catalog) -> Path:
    """The lake's write lock: held by a run only while its lake transaction is open."""
    return catalog.warehouse_catalog_path.with_name(catalog.warehouse_catalog_path.name + ".lock")


def integration_lock(catalog: Catalog, integration: str) -> Path:
    """Held by a run of the integration for its whole length."""
    return catalog.warehouse_catalog_path.parent / ".locks" / f"{integration}.lock"


def held(lock: Path) -> bool:
    if not lock.exists():
        return False
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def has_open(pid: int, path: Path) -> bool:
    """Whether the process has `path` open (Linux /proc)."""
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def start_run(landing: Landing, integration: str) -> subprocess.Popen[bytes]:
    """`integration-hub run` in a process of its own, on the test's Dagster instance (made first:
    processes creating one instance's storage at the same moment would race)."""
    with dagster_instance():
        pass
    return subprocess.Popen(
        [sys.executable, "-m", "integration_hub.cli.main", "run", integration, "--catalog", str(landing.catalog_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {process.stderr.read().decode() if process.stderr else ''}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.005)


CRM_CONTENT = (
    "SELECT user_id, plan, support_tickets, active, signup_date, last_login_at, "
    "regexp_extract(_source, '[^/]+$') AS source_file FROM attributes_crm"
)


def content(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[int, int]:
    """(rows, order-independent hash) of a query: what the table holds, wherever the lake lives."""
    rows, total = con.execute(f"SELECT count(*), coalesce(sum(hash(q)), 0) FROM ({sql}) AS q").fetchone()
    return int(rows), int(total)


def table_files(con: duckdb.DuckDBPyConnection, table: str) -> set[tuple]:
    return set(con.execute(f"SELECT data_file, delete_file FROM ducklake_list_files('lake', '{table}')").fetchall())


@pytest.fixture(scope="module")
def one_clean_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, int]:
    """attributes_crm after the two files were applied by runs nobody killed."""
    landing = local_landing_at(tmp_path_factory.mktemp("clean"))
    catalog = landing.write_catalog()
    landing.put("crm/a_before.csv", big_file(1000, "before"))
    assert run_job(catalog, "crm").success
    landing.put("crm/b_big.csv", big_file(BIG_ROWS, "after"))
    assert run_job(catalog, "crm").success
    with open_reader(catalog) as con:
        assert con is not None
        return content(con, CRM_CONTENT)


@pytest.mark.parametrize("moment", ["staging", "writing", "random-1", "random-2"])
def test_a_killed_run_leaves_the_last_snapshot_and_a_rerun_equals_one_clean_run(
    local_landing: Landing, one_clean_run: tuple[int, int], moment: str
) -> None:
    catalog = local_landing.write_catalog()
    lake = Lake.of(catalog)
    local_landing.put("crm/a_before.csv", big_file(1000, "before"))
    assert run_job(catalog, "crm").success
    with open_reader(catalog) as con:
        assert con is not None
        before, files_before = content(con, CRM_CONTENT), table_files(con, "attributes_crm")
    on_disk_before = set(lake.data_path.rglob("*.parquet"))
    big = local_landing.root / "landing" / local_landing.put("crm/b_big.csv", big_file(BIG_ROWS, "after"))

    process = start_run(local_landing, "crm")
    table_folder = lake.data_path / "main" / "attributes_crm"
    if moment == "staging":  # reading and validating the file: before the lake transaction
        wait_for(lambda: has_open(process.pid, big) and not held(write_lock(catalog)), process, "staging")
    elif moment == "writing":  # writing the new Parquet file(s), before or inside the lake transaction
        known = set(table_folder.iterdir())
        wait_for(lambda: bool(set(table_folder.iterdir()) - known), process, "new Parquet file")
    else:  # anywhere in the run, even after its commit
        wait_for(lambda: held(integration_lock(catalog, "crm")), process, "the run's start")
        time.sleep(random.Random(moment).uniform(0.0, 4.0))
    process.send_signal(signal.SIGKILL)
    process.wait()

    with open_reader(catalog) as con:
        assert con is not None
        after_kill, files_after_kill = content(con, CRM_CONTENT), table_files(con, "attributes_crm")
    left_behind = set(lake.data_path.rglob("*.parquet")) - on_disk_before
    if after_kill == before:  # all of the file or none of it
        assert files_after_kill == files_before, "no Parquet file of the killed run is visible"
        assert "b_big.csv" in local_landing.keys(), "not applied, so the file must still be pending"
    else:
        assert moment.startswith("random"), f"killed while {moment}, yet the file was applied"
        assert after_kill == one_clean_run
        left_behind = set()
    if moment == "staging":
        assert not left_behind, "staging writes no lake file"
    if moment == "writing":
        assert left_behind, "the kill came while the run was writing Parquet files"

    # Maintenance deletes what the killed run wrote (nobody reads the lake here: no grace period).
    report = maintain_lake(lake, 30, delete_immediately=True)
    assert report.orphaned_files_deleted >= len(left_behind)
    assert not left_behind & set(lake.data_path.rglob("*.parquet"))
    with open_reader(catalog) as con:
        assert con is not None
        assert content(con, CRM_CONTENT) == after_kill

    assert run_job(catalog, "crm").success
    with open_reader(catalog) as con:
        assert con is not None
        assert content(con, CRM_CONTENT) == one_clean_run
    applied = [r for r in runs_of(catalog) if r["source"].endswith("b_big.csv") and r["status"] == "success"]
    assert len(applied) == 1, runs_of(catalog)
    assert "success/b_big.csv" in local_landing.keys() and "b_big.csv" not in local_landing.keys()


def test_lake_transactions_take_turns_and_readers_never_wait(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "catalog.sqlite", tmp_path / "lake")
    with open_writer(lake) as con, transaction(con):
        con.execute("CREATE TABLE t (n INTEGER)")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path\n"
         "from integration_hub.core.warehouse import Lake, open_writer, transaction\n"
         f"lake = Lake(Path({str(lake.catalog_path)!r}), Path({str(lake.data_path)!r}))\n"
         "with open_writer(lake) as con, transaction(con):\n"
         "    con.execute('INSERT INTO t VALUES (1)'); print('holding', flush=True); time.sleep(3)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    lock = lake.catalog_path.with_name("catalog.sqlite.lock")
    with pytest.raises(WarehouseBusyError, match="the warehouse has been busy for 0 s: another run holds it"):
        with file_lock(lock, "the warehouse", timeout=0.5):
            pass
    started = time.monotonic()
    with open_reader(lake) as reader:  # the last commit, at once: the holder's row is not committed
        assert reader is not None and reader.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert holder.poll() is None, "the reader did not wait for the writer"
    with open_writer(lake) as con:
        with transaction(con):  # waits for its turn, then commits after the holder's commit
            con.execute("INSERT INTO t VALUES (2)")
        assert time.monotonic() - started > 0.5
        assert sorted(con.execute("SELECT n FROM t").fetchall()) == [(1,), (2,)]
    assert holder.wait() == 0


# --------------------------------------------------------------------------- concurrent runs

BILLING_INTEGRATION = {
    "name": "billing",
    "type": "s3_csv",
    "connection": "landing",
    "folder": "billing",
    "user_id_column": "email",
    "properties": [
        {"column": "mrr", "name": "mrr", "type": "number"},
        {"column": "tier", "name": "billing_tier", "type": "string"},
    ],
    "schedule": "*/15 * * * *",
}
CONCURRENT_ROWS = 200_000
API_BATCHES = 3


def land_inputs(landing: Landing, batch_ids: list[str]) -> Catalog:
    """Two large CSV files for two integrations and API batches for a third."""
    catalog = landing.write_catalog(CRM_INTEGRATION, BILLING_INTEGRATION, WEB_INTEGRATION)
    landing.put("crm/crm.csv", big_file(CONCURRENT_ROWS, "gold"))
    landing.put(
        "billing/billing.csv",
        "email,mrr,tier\n" + "".join(f"user{n}@example.com,{n % 500}.5,t{n % 3}\n" for n in range(CONCURRENT_ROWS)),
    )
    mapping = compile_mapping(catalog.integration("web"))
    for number, batch_id in enumerate(batch_ids):
        records = [
            {"userId": f"user{n}@example.com", "planTier": f"web{number}", "visits": n, "isActive": n % 2 == 0}
            for n in range(number * 500, number * 500 + 1000)  # later batches overwrite half of the earlier one
        ]
        validated = mapping.validate(records)
        status = {"batch_id": batch_id, "integration": "web", "accepted": validated.accepted,
                  "rejected": validated.problems, "rejected_count": validated.rejected_records}  # fmt: skip
        BatchStore(catalog.landing_path).land("web", batch_id, validated.ndjson(), status)
    return catalog


STATE = {
    "attributes_crm": CRM_CONTENT,
    "attributes_billing": "SELECT user_id, mrr, billing_tier, regexp_extract(_source, '[^/]+$') FROM attributes_billing",
    "attributes_web": "SELECT user_id, plan_tier, visits, is_active, signup_day, last_seen_at, _source FROM attributes_web",
    "integration_runs": "SELECT integration, kind, regexp_extract(source, '[^/]+$'), status, rows_read, rows_applied, "
                        "rows_rejected, properties_imported, message FROM integration_runs",
    "processed_files": "SELECT integration, key, sha256, size_bytes, status FROM processed_files",
    "rejected_rows": "SELECT integration, row_number, user_id, column_name, value, reason FROM rejected_rows",
    "user_profiles": "SELECT * EXCLUDE (last_updated_at) FROM user_profiles",
}  # fmt: skip


def state_of(catalog: Catalog) -> dict[str, tuple[int, int]]:
    with open_reader(catalog) as con:
        assert con is not None
        return {name: content(con, sql) for name, sql in STATE.items()}


def test_concurrent_runs_of_different_integrations_all_commit_like_a_serial_run(tmp_path: Path) -> None:
    batch_ids = [new_batch_id() for _ in range(API_BATCHES)]
    serial = local_landing_at(tmp_path / "serial")
    catalog = land_inputs(serial, batch_ids)
    assert run_job(catalog, "crm").success
    assert run_job(catalog, "billing").success
    apply_batches(catalog)
    expected = state_of(catalog)
    assert expected["attributes_crm"][0] == expected["attributes_billing"][0] == CONCURRENT_ROWS
    assert expected["attributes_web"][0] == 500 * (API_BATCHES + 1)

    concurrent = local_landing_at(tmp_path / "concurrent")
    catalog = land_inputs(concurrent, batch_ids)
    # Hold the lake's write lock until all three runs are inside their steps: they then stage,
    # commit and record at the same time, taking turns only at the lock.
    with file_lock(write_lock(catalog), "the test"):
        processes = {name: start_run(concurrent, name) for name in ("crm", "billing", "web")}
        for name, process in processes.items():
            wait_for(lambda name=name: held(integration_lock(catalog, name)), process, f"the {name} run's start")
    outcomes = {name: process.communicate(timeout=600) for name, process in processes.items()}
    for name, process in processes.items():
        assert process.returncode == 0, (name, outcomes[name][1].decode())
    assert "crm.csv: success (200000 read, 200000 applied, 0 rejected)" in outcomes["crm"][0].decode()
    assert "billing.csv: success (200000 read, 200000 applied, 0 rejected)" in outcomes["billing"][0].decode()

    assert state_of(catalog) == expected
    assert sorted(concurrent.keys("crm")) == ["success/crm.csv"] and sorted(concurrent.keys("billing")) == [
        "success/billing.csv"
    ]
    assert not list((catalog.landing_path / "web" / "pending").glob("*.ndjson"))


def test_a_new_property_adds_a_column_and_keeps_the_data(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/a.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    wider = {**CRM_INTEGRATION, "properties": [*CRM_INTEGRATION["properties"], {"column": "nps", "name": "nps_score", "type": "number"}]}
    catalog = local_landing.write_catalog(wider)
    local_landing.put("crm/b.csv", "email,Plan Tier,tickets,is_active,signup,last_login,nps\nb@x.com,free,2,no,2024-01-01,,9\n")
    assert run_job(catalog, "crm").success
    assert query(catalog, "SELECT user_id, plan, nps_score FROM attributes_crm ORDER BY user_id") == [
        ("a@x.com", "gold", None),
        ("b@x.com", "free", 9.0),
    ]
    assert "nps_score" in [c[0] for c in query(catalog, "DESCRIBE user_profiles")]


def test_a_type_change_that_does_not_convert_is_refused_and_changes_nothing(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/a.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    changed = {**CRM_INTEGRATION, "properties": [{"column": "Plan Tier", "name": "plan", "type": "number"}]}
    catalog = local_landing.write_catalog(changed)
    local_landing.put("crm/b.csv", HEADER + "b@x.com,3,2,no,2024-01-01,\n")
    result = run_job_allowing_failure(catalog)
    assert not result.success
    with open_writer(load_catalog(local_landing.catalog_path)) as con:
        assert con.execute("SELECT user_id, plan FROM attributes_crm").fetchall() == [("a@x.com", "gold")]
    assert "b.csv" in local_landing.keys()  # still pending, nothing lost


def test_running_out_of_duckdb_memory_says_how_to_fix_it_and_changes_nothing(
    local_landing: Landing, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/a.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    local_landing.put("crm/b.csv", big_file(200_000, "big"))
    monkeypatch.setenv("INTEGRATION_HUB_DUCKDB_MEMORY", "16MB")
    result = run_job_allowing_failure(catalog)
    assert not result.success
    message = step_error_text(result)
    # 16 MB does not even open the lake: the run says so before touching the file.
    assert "DuckDB needed more than its memory_limit of" in message and "to open the warehouse" in message
    assert "set $INTEGRATION_HUB_DUCKDB_MEMORY higher (e.g. 4GB)" in message
    monkeypatch.delenv("INTEGRATION_HUB_DUCKDB_MEMORY")
    assert query(catalog, "SELECT user_id, plan FROM attributes_crm") == [("a@x.com", "gold")]
    assert "b.csv" in local_landing.keys()  # still pending: the next run with more memory applies it
    assert run_job(catalog, "crm").success
    assert query(catalog, "SELECT count(*) FROM attributes_crm")[0][0] == 200_001


def test_an_apply_out_of_memory_names_the_source_and_the_setting_and_applies_nothing(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/a.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    source = (
        "SELECT 'user' || i || '@x.com' AS email, 'big' AS \"Plan Tier\", CAST(i AS VARCHAR) AS tickets, "
        "'yes' AS is_active, '2024-01-01' AS signup, NULL AS last_login FROM range(2000000) AS r(i)"
    )
    run = ingest.RunRecord("r1", "crm", "csv", "s3://acme/inbound/crm/b.csv", ingest.now_utc())
    with open_writer(catalog) as con:
        # No spilling to disk, so a small limit is really too small.
        con.execute("SET memory_limit = '24MB'")
        con.execute("SET max_temp_directory_size = '0KiB'")
        with pytest.raises(ingest.WarehouseMemoryError) as failure:
            ingest.apply_source(con, catalog.integration("crm"), source, run, max_rejected_ratio=0.1)
    assert str(failure.value).startswith("DuckDB needed more than its memory_limit of ")
    assert "to apply s3://acme/inbound/crm/b.csv (into attributes_crm); nothing was applied" in str(failure.value)
    assert "set $INTEGRATION_HUB_DUCKDB_MEMORY higher (e.g. 4GB)" in str(failure.value)
    assert query(catalog, "SELECT user_id, plan FROM attributes_crm") == [("a@x.com", "gold")]
    assert query(catalog, "SELECT count(*) FROM integration_runs WHERE run_id = 'r1'") == [(0,)]


def run_job_allowing_failure(catalog):
    import dagster as dg

    from integration_hub.definitions import build_definitions

    job = build_definitions(catalog).resolve_job_def("crm_job")
    with dg.DagsterInstance.ephemeral() as instance:
        return job.execute_in_process(instance=instance, raise_on_error=False)


def _apply_sequence(
    landing: Landing, monkeypatch: pytest.MonkeyPatch, rewrite: bool, join_parts: int | None = None
) -> tuple[list[tuple], int]:
    """Four files (keep, rejections, a dropped property, clear) and a source whose rows name their
    own source (as API batches do) applied by MERGE or by rewrite (its join in `join_parts` parts)."""
    # The size threshold only chooses the strategy; both must give the same table.
    monkeypatch.setattr(ingest, "REWRITE_MIN_ROWS", 1 if rewrite else 10**12)
    if join_parts is not None:  # as a source too large for one hash table would be split
        monkeypatch.setattr(ingest, "_join_parts", lambda *args: join_parts)
    rewrites = []
    real_rewrite_table = ingest._rewrite_table
    monkeypatch.setattr(ingest, "_rewrite_table", lambda *args: rewrites.append(1) or real_rewrite_table(*args))
    header = "email,Plan Tier,tickets,is_active,signup,last_login\n"
    catalog = landing.write_catalog({**CRM_INTEGRATION, "max_rejected_ratio": 0.75})

    def land(name: str, *rows: str) -> None:
        landing.put(f"crm/{name}", header + "".join(f"{r}\n" for r in rows))

    # Two files in one run: the second is staged on the connection the first one rewrote with.
    land("a.csv", "ann@example.com,gold,5,yes,2024-01-01,2024-05-01T10:00:00Z", "bob@example.com,silver,1,no,2023-01-01,")
    land(
        "b.csv",
        "ann@example.com,,7,,,",  # blank cells keep the old values
        "cy@example.com,free,1,yes,2024-02-01,",
        "dup@example.com,gold,1,yes,,",
        "dup@example.com,gold,2,yes,,",
        "bad@example.com,gold,many,yes,,",
    )
    assert run_job(catalog, "crm").success
    assert query(catalog, "SELECT row_number, value FROM rejected_rows ORDER BY row_number") == [
        (4, "dup@example.com"), (5, "dup@example.com"), (6, "many")
    ]
    without_tickets = [p for p in CRM_INTEGRATION["properties"] if p["name"] != "support_tickets"]
    catalog = landing.write_catalog({**CRM_INTEGRATION, "properties": without_tickets, "on_blank": "clear"})
    land("c.csv", "ann@example.com,,99,no,,", "dee@example.com,bronze,1,yes,,")
    assert run_job(catalog, "crm").success
    catalog = landing.write_catalog({**CRM_INTEGRATION, "on_blank": "clear"})  # every column mapped again
    land("d.csv", "cy@example.com,,3,no,,")
    assert run_job(catalog, "crm").success
    catalog = landing.write_catalog({**CRM_INTEGRATION, "on_blank": "keep"})
    batches = (
        "SELECT * FROM (VALUES ('bob@example.com', 'platinum', NULL, NULL, NULL, NULL, 'batch-1'), "
        "('eve@example.com', 'gold', '4', 'yes', '2024-03-01', '2024-06-01T00:00:00Z', 'batch-2'), "
        "('dee@example.com', NULL, '2', 'no', '2024-03-02', '2024-06-02T00:00:00Z', NULL)) "
        "AS t(email, \"Plan Tier\", tickets, is_active, signup, last_login, _row_source)"
    )
    run = ingest.RunRecord(run_id="r5", integration="crm", kind="api", source="e.api", started_at=ingest.now_utc())
    with open_writer(catalog) as con:
        ingest.apply_source(con, catalog.integration("crm"), batches, run, max_rejected_ratio=0)
    assert run.status == "success"
    rows = query(
        catalog,
        "SELECT user_id, plan, support_tickets, active, signup_date, last_login_at, "
        "regexp_extract(_source, '([a-z]\\.csv|\\.api|batch-\\d)$') FROM attributes_crm ORDER BY user_id",
    )
    # No index in the lake: each apply keeps user_id unique by itself.
    assert query(catalog, "SELECT count(*) - count(DISTINCT user_id) FROM attributes_crm") == [(0,)]
    return rows, len(rewrites)


@pytest.mark.parametrize(("limit", "expected"), [("1GB", 10**9), ("512MB", 512 * 10**6), ("3GiB", 3 * 2**30), ("100KiB", 100 * 2**10)])
def test_the_memory_limit_is_read_back_in_bytes(limit: str, expected: int) -> None:
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{limit}'")
    assert abs(memory_limit_bytes(con) - expected) <= expected * 0.001  # DuckDB shows one decimal


def test_the_rewrites_join_is_split_by_what_its_hash_table_would_hold(tmp_path: Path) -> None:
    """More parts for more ids, longer ids, rows that carry their values, or less memory; one when it fits."""
    con = duckdb.connect()

    def stage(name: str, rows: int, id_width: int) -> str:
        path = str(tmp_path / f"{name}.parquet")
        con.execute(
            f"COPY (SELECT lpad(CAST(n AS VARCHAR), {id_width}, 'u') AS user_id, "
            "CASE WHEN n % 2 = 0 THEN NULL ELSE n END AS _typed0, CAST(n AS VARCHAR) AS _typed1 "
            f"FROM range({rows}) AS r(n)) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 16384)"
        )
        return path

    small, large, long_ids = stage("small", 400_000, 20), stage("large", 1_600_000, 20), stage("long", 400_000, 200)
    con.execute("SET memory_limit = '32MB'")
    parts = {
        (name, fill): ingest._join_parts(con, path, rows, 4, fill)
        for name, path, rows in (("small", small, 400_000), ("large", large, 1_600_000), ("long", long_ids, 400_000))
        for fill in ("none", "blanks", "all")
    }
    assert parts[("small", "none")] >= 2  # 400,000 x (32 + 20) bytes in 40% of 32 MB
    assert parts[("small", "none")] < parts[("small", "blanks")] < parts[("small", "all")]
    assert parts[("large", "none")] > 3 * parts[("small", "none")]
    assert parts[("long", "none")] > 3 * parts[("small", "none")]
    con.execute("SET memory_limit = '1GB'")
    assert ingest._join_parts(con, large, 1_600_000, 4, "all") == 1


def test_a_large_source_rewrites_the_table_with_the_same_result_as_a_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    merged, merge_rewrites = _apply_sequence(local_landing_at(tmp_path / "merge"), monkeypatch, rewrite=False)
    rewritten, rewrites = _apply_sequence(local_landing_at(tmp_path / "rewrite"), monkeypatch, rewrite=True)
    in_parts, _ = _apply_sequence(local_landing_at(tmp_path / "parts"), monkeypatch, rewrite=True, join_parts=3)
    assert (merge_rewrites, rewrites) == (0, 5)
    assert rewritten == merged
    assert in_parts == merged
    assert merged == [
        # on_blank: clear in c.csv and d.csv; the column dropped for c.csv kept its data
        ("ann@example.com", None, 7.0, False, None, None, "c.csv"),
        ("bob@example.com", "platinum", 1.0, False, date(2023, 1, 1), None, "batch-1"),  # blanks kept
        ("cy@example.com", None, 3.0, False, None, None, "d.csv"),
        ("dee@example.com", "bronze", 2.0, False, date(2024, 3, 2), datetime(2024, 6, 2, tzinfo=timezone.utc), ".api"),
        ("eve@example.com", "gold", 4.0, True, date(2024, 3, 1), datetime(2024, 6, 1, tzinfo=timezone.utc), "batch-2"),
    ]
