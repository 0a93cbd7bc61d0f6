"""Crashes, concurrent writers and schema changes never lose or double data."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from integration_hub.core import ingest
from integration_hub.core.catalog import load_catalog
from integration_hub.core.warehouse import WarehouseBusyError, open_writer, writer_lock
from integration_hub_tests.support import CRM_INTEGRATION, Landing, local_landing_at, query, run_job, runs_of

HEADER = "email,Plan Tier,tickets,is_active,signup,last_login\n"


def big_file(rows: int, plan: str) -> str:
    return HEADER + "".join(f"user{n}@example.com,{plan},{n},yes,2024-01-01,2024-01-01T00:00:00Z\n" for n in range(rows))


def writer_busy(database: Path) -> bool:
    with open(f"{database}.writer.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


@pytest.mark.parametrize("kill_after", [0.05, 0.4, 1.2])
def test_a_killed_run_leaves_the_table_as_it_was_and_a_rerun_finishes_the_job(
    local_landing: Landing, kill_after: float
) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/a_before.csv", big_file(1000, "before"))
    assert run_job(catalog, "crm").success
    rows = 300_000
    local_landing.put("crm/b_big.csv", big_file(rows, "after"))

    env = {**os.environ, "DAGSTER_HOME": str(local_landing.root / "dh")}
    process = subprocess.Popen(
        [sys.executable, "-m", "integration_hub.cli.main", "run", "crm", "--catalog", str(local_landing.catalog_path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not writer_busy(catalog.warehouse_path) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(kill_after)
    process.send_signal(signal.SIGKILL)
    process.wait()

    # Whatever the moment of the crash: all of the file or none of it.
    plans = dict(query(catalog, "SELECT plan, count(*) FROM attributes_crm GROUP BY plan"))
    if plans == {"before": 1000}:
        assert "b_big.csv" in local_landing.keys(), "not applied, so the file must still be pending"
    else:
        assert plans == {"after": rows}, plans

    assert run_job(catalog, "crm").success
    assert dict(query(catalog, "SELECT plan, count(*) FROM attributes_crm GROUP BY plan")) == {"after": rows}
    applied = [r for r in runs_of(catalog) if r["source"].endswith("b_big.csv") and r["status"] == "success"]
    assert len(applied) == 1, runs_of(catalog)
    assert "success/b_big.csv" in local_landing.keys() and "b_big.csv" not in local_landing.keys()


def test_a_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    database = tmp_path / "w.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from integration_hub.core.warehouse import open_writer\n"
         f"with open_writer(Path({str(database)!r})) as con:\n    print('holding', flush=True); time.sleep(3)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "holding"
    with pytest.raises(WarehouseBusyError, match="another run is writing it"):
        with writer_lock(database, timeout=0.5):
            pass
    started = time.monotonic()
    with open_writer(database, timeout=30) as con:  # waits, then gets it
        assert con.execute("SELECT 1").fetchone() == (1,)
    assert time.monotonic() - started > 0.5
    holder.wait()


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
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error, message = failure.event_specific_data.error, ""
    while error is not None:  # Dagster wraps the op's exception
        message, error = message + error.message, error.cause
    assert "memory_limit" in message and "INTEGRATION_HUB_DUCKDB_MEMORY" in message and "b.csv" in message
    monkeypatch.delenv("INTEGRATION_HUB_DUCKDB_MEMORY")
    assert query(catalog, "SELECT user_id, plan FROM attributes_crm") == [("a@x.com", "gold")]
    assert "b.csv" in local_landing.keys()  # still pending: the next run with more memory applies it
    assert run_job(catalog, "crm").success
    assert query(catalog, "SELECT count(*) FROM attributes_crm")[0][0] == 200_001


def run_job_allowing_failure(catalog):
    import dagster as dg

    from integration_hub.definitions import build_definitions

    job = build_definitions(catalog).resolve_job_def("crm_job")
    with dg.DagsterInstance.ephemeral() as instance:
        return job.execute_in_process(instance=instance, raise_on_error=False)


def _apply_sequence(landing: Landing, monkeypatch: pytest.MonkeyPatch, rebuild: bool) -> tuple[list[tuple], int]:
    """Three files (keep, rejections, a dropped property, clear) applied by MERGE or by rebuild."""
    # The size threshold only chooses the strategy; both must give the same table.
    monkeypatch.setattr(ingest, "REBUILD_MIN_ROWS", 1 if rebuild else 10**12)
    rebuilds = []
    real_rebuild_sql = ingest._rebuild_sql
    monkeypatch.setattr(ingest, "_rebuild_sql", lambda *args: rebuilds.append(1) or real_rebuild_sql(*args))
    header = "email,Plan Tier,tickets,is_active,signup,last_login\n"
    catalog = landing.write_catalog({**CRM_INTEGRATION, "max_rejected_ratio": 0.75})

    def land(name: str, *rows: str) -> None:
        landing.put(f"crm/{name}", header + "".join(f"{r}\n" for r in rows))

    # Two files in one run: the second is staged on the connection the first one rebuilt with.
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
    rows = query(
        catalog,
        "SELECT user_id, plan, support_tickets, active, signup_date, last_login_at, "
        "regexp_extract(_source, '[a-z]\\.csv$') FROM attributes_crm ORDER BY user_id",
    )
    keys = query(catalog, "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = 'attributes_crm'")
    assert ("PRIMARY KEY",) in keys
    return rows, len(rebuilds)


def test_a_large_source_rebuilds_the_table_with_the_same_result_as_a_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    merged, merge_rebuilds = _apply_sequence(local_landing_at(tmp_path / "merge"), monkeypatch, rebuild=False)
    rebuilt, rebuilds = _apply_sequence(local_landing_at(tmp_path / "rebuild"), monkeypatch, rebuild=True)
    assert (merge_rebuilds, rebuilds) == (0, 4)
    assert rebuilt == merged
    assert merged == [
        # on_blank: clear in c.csv and d.csv; the column dropped for c.csv kept its data
        ("ann@example.com", None, 7.0, False, None, None, "c.csv"),
        ("bob@example.com", "silver", 1.0, False, date(2023, 1, 1), None, "a.csv"),
        ("cy@example.com", None, 3.0, False, None, None, "d.csv"),
        ("dee@example.com", "bronze", None, True, None, None, "c.csv"),
    ]
