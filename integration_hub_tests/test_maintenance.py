"""The `warehouse_maintenance` job: compaction, snapshot expiry, unreferenced and orphaned files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from integration_hub.core.catalog import Catalog, CatalogError
from integration_hub.core.maintenance import ASSET_KEY, JOB_NAME, SCHEDULE_NAME, maintain_lake
from integration_hub.core.migrate import fingerprint
from integration_hub.core.warehouse import Lake, open_reader
from integration_hub.definitions import build_definitions
from integration_hub_tests.support import Landing, run_job

HEADER = "email,Plan Tier,tickets,is_active,signup,last_login\n"


def small_applies(landing: Landing, files: int) -> Catalog:
    """`files` small files in one run: each is its own apply, so its own Parquet (and delete) files."""
    catalog = landing.write_catalog()
    for n in range(files):
        rows = "".join(f"user{u}@example.com,plan{n},{n},yes,2024-01-01,\n" for u in range(n * 3, n * 3 + 6))
        landing.put(f"crm/f{n:02d}.csv", HEADER + rows)
    assert run_job(catalog, "crm").success
    return catalog


def contents(lake: Lake) -> dict[str, tuple[int, int]]:
    """Every lake table's (rows, content hash)."""
    with open_reader(lake) as con:
        assert con is not None
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'lake'").fetchall()]
        return {table: fingerprint(con, "lake", table) for table in tables}


def parquet_files(lake: Lake) -> set[Path]:
    return set(lake.data_path.rglob("*.parquet"))


def snapshot_ids(lake: Lake) -> list[int]:
    with open_reader(lake) as con:
        assert con is not None
        return [r[0] for r in con.execute("SELECT snapshot_id FROM lake.snapshots() ORDER BY snapshot_id").fetchall()]


def test_maintenance_compacts_small_files_and_keeps_every_table_and_its_history(local_landing: Landing) -> None:
    catalog = small_applies(local_landing, 8)
    lake = Lake.of(catalog)
    before = contents(lake)
    ids = snapshot_ids(lake)
    middle = ids[len(ids) // 2]
    with open_reader(lake) as con:
        assert con is not None
        then = con.execute(f"SELECT count(*), max(plan) FROM attributes_crm AT (VERSION => {middle})").fetchall()

    job = build_definitions(catalog).resolve_job_def(JOB_NAME)
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            instance=instance,
            run_config={"ops": {ASSET_KEY.to_python_identifier(): {"config": {"delete_immediately": True}}}},
        )
    assert result.success
    [materialization] = result.asset_materializations_for_node(ASSET_KEY.to_python_identifier())
    metadata = {key: value.value for key, value in materialization.metadata.items()}

    assert metadata["live_files_after"] < metadata["live_files_before"], metadata
    assert metadata["files_after"] < metadata["files_before"], metadata
    assert metadata["bytes_after"] < metadata["bytes_before"], metadata
    assert metadata["files_deleted"] == metadata["unreferenced_files_deleted"] > 0
    assert metadata["snapshots_expired"] == 0  # all younger than snapshot_retention_days (30)
    assert metadata["snapshots_after"] >= metadata["snapshots_before"]
    assert metadata["files_after"] == len(parquet_files(lake))

    assert contents(lake) == before
    with open_reader(lake) as con:
        assert con is not None
        assert con.execute(f"SELECT count(*), max(plan) FROM attributes_crm AT (VERSION => {middle})").fetchall() == then
    # The next run applies on top of the compacted table as before.
    local_landing.put("crm/later.csv", HEADER + "user0@example.com,late,1,no,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    with open_reader(lake) as con:
        assert con is not None
        assert con.execute("SELECT plan FROM attributes_crm WHERE user_id = 'user0@example.com'").fetchall() == [("late",)]
        assert con.execute("SELECT count(*) - count(DISTINCT user_id) FROM attributes_crm").fetchall() == [(0,)]


def _age_snapshots(lake: Lake, ages: dict[int, timedelta]) -> None:
    """Pretend some snapshots were committed earlier (the catalog stores their time as text)."""
    now = datetime.now(timezone.utc)
    with sqlite3.connect(lake.catalog_path) as db:
        for snapshot_id, age in ages.items():
            when = (now - age).strftime("%Y-%m-%d %H:%M:%S.%f+00")
            db.execute("UPDATE ducklake_snapshot SET snapshot_time = ? WHERE snapshot_id = ?", [when, snapshot_id])


def test_snapshots_older_than_the_retention_are_expired_and_younger_ones_kept(local_landing: Landing) -> None:
    catalog = small_applies(local_landing, 3)
    lake = Lake(catalog.warehouse_catalog_path, catalog.warehouse_data_path, retention_days=1)
    ids = snapshot_ids(lake)
    old, young = ids[:3], ids[3]
    # 23 hours is inside a 1-day retention, on the cut-off's calendar day most of the time: a
    # comparison of the times as text would expire it too.
    _age_snapshots(lake, {**{i: timedelta(days=3) for i in old}, young: timedelta(hours=23)})
    before = contents(lake)

    report = maintain_lake(lake, lake.retention_days)

    assert report.snapshots_expired == len(old)
    remaining = snapshot_ids(lake)
    assert not set(old) & set(remaining) and young in remaining and ids[-1] in remaining
    assert report.after.snapshots == len(remaining)
    with open_reader(lake) as con:
        assert con is not None
        con.execute(f"SELECT count(*) FROM integration_runs AT (VERSION => {young})")
        with pytest.raises(duckdb.Error):
            con.execute(f"SELECT count(*) FROM integration_runs AT (VERSION => {old[-1]})")
    assert contents(lake) == before


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from integration_hub.core.warehouse import Lake, open_writer, transaction
lake = Lake(Path(sys.argv[1]), Path(sys.argv[2]))
with open_writer(lake) as con, transaction(con):
    con.execute("INSERT INTO attributes_crm (user_id, plan) SELECT 'ghost' || i, 'ghost' FROM range(100000) r(i)")
    os.kill(os.getpid(), signal.SIGKILL)  # dies inside the transaction: its Parquet files stay behind
"""


def test_orphaned_files_of_a_killed_writer_are_deleted_once_old_enough(local_landing: Landing) -> None:
    catalog = small_applies(local_landing, 2)
    lake = Lake.of(catalog)
    known = parquet_files(lake)
    before = contents(lake)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(lake.catalog_path), str(lake.data_path)], capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr
    orphans = parquet_files(lake) - known
    assert orphans, "the killed writer left its Parquet files"
    assert contents(lake) == before, "its rows were never visible"

    # Young orphans may belong to a transaction about to commit: left for the next run.
    report = maintain_lake(lake, 30)
    assert report.orphaned_files_deleted == 0 and orphans <= parquet_files(lake)

    hours_ago = time.time() - 2 * 3600
    for path in orphans:
        os.utime(path, (hours_ago, hours_ago))
    stray = lake.data_path / "notes.txt"
    stray.write_text("not the lake's")
    os.utime(stray, (hours_ago, hours_ago))
    report = maintain_lake(lake, 30)
    assert report.orphaned_files_deleted == 0 and stray.exists() and orphans <= parquet_files(lake)
    assert report.orphans_skipped == (
        f"the data path {lake.data_url} holds 1 file(s) the lake did not write (e.g. {stray}): give "
        "warehouse.data_path a folder of its own, or move them away"
    )

    stray.unlink()
    report = maintain_lake(lake, 30)
    assert report.orphaned_files_deleted == len(orphans)
    assert not orphans & parquet_files(lake)
    assert contents(lake) == before


def test_the_maintenance_job_and_its_schedule(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog(warehouse={"catalog": str(local_landing.root / "c.sqlite"),
                                                     "data_path": str(local_landing.root / "lake"),
                                                     "maintenance_schedule": "30 2 * * 0"})  # fmt: skip
    definitions = build_definitions(catalog)
    schedule = definitions.resolve_schedule_def(SCHEDULE_NAME)
    assert schedule.cron_schedule == "30 2 * * 0" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == JOB_NAME
    spec = definitions.resolve_asset_graph().get(ASSET_KEY)
    assert spec.group_name == "warehouse" and spec.kinds == {"ducklake"}
    assert set(definitions.resolve_job_def(JOB_NAME).asset_layer.selected_asset_keys) == {ASSET_KEY}

    # No lake yet: nothing to do, and nothing created.
    with dg.DagsterInstance.ephemeral() as instance:
        result = definitions.resolve_job_def(JOB_NAME).execute_in_process(instance=instance)
    assert result.success and not catalog.warehouse_catalog_path.exists()

    with pytest.raises(CatalogError, match="warehouse field 'maintenance_schedule' 'nightly' is not a valid cron"):
        local_landing.write_catalog(warehouse={"catalog": "c.sqlite", "data_path": "lake", "maintenance_schedule": "nightly"})


def test_a_run_with_nothing_to_do_adds_no_snapshot(local_landing: Landing) -> None:
    catalog = small_applies(local_landing, 1)
    lake = Lake.of(catalog)
    before = snapshot_ids(lake)
    assert run_job(catalog, "crm").success  # nothing pending: the schema and the view are current
    assert snapshot_ids(lake) == before


def test_unreferenced_files_are_deleted_after_a_grace_period(local_landing: Landing) -> None:
    catalog = small_applies(local_landing, 4)
    lake = Lake.of(catalog)
    first = maintain_lake(lake, 30)  # merges: the merged-away files are unreferenced from now on
    assert first.unreferenced_files_deleted == 0 and first.after.live_files < first.before.live_files
    with sqlite3.connect(lake.catalog_path) as db:
        scheduled = [r[0] for r in db.execute("SELECT path FROM ducklake_files_scheduled_for_deletion ORDER BY path")]
        assert len(scheduled) > 1
        recent, old = scheduled[0], scheduled[1:]
        now = datetime.now(timezone.utc)
        for path, age in [(recent, timedelta(minutes=30)), *((p, timedelta(days=2)) for p in old)]:
            when = (now - age).strftime("%Y-%m-%d %H:%M:%S.%f+00")
            db.execute("UPDATE ducklake_files_scheduled_for_deletion SET schedule_start = ? WHERE path = ?", [when, path])
    before = contents(lake)

    report = maintain_lake(lake, 30)

    assert report.unreferenced_files_deleted == len(old)
    on_disk = {str(p.relative_to(lake.data_path)) for p in parquet_files(lake)}
    assert recent in on_disk and not set(old) & on_disk
    assert contents(lake) == before
