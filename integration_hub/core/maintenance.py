"""Keeping the lake lean: merge small files, expire old snapshots, delete files nothing reads.

Every apply adds Parquet files (and delete files for updated rows) and a snapshot; nothing is
ever removed by a run, which is what makes time travel and crash safety work. This module is
the other half, run by the scheduled `warehouse_maintenance` job:

1. rewrite files whose rows are mostly deleted, then merge adjacent small files, table by table;
2. expire snapshots older than `snapshot_retention_days` (history and as-of queries stop there);
3. delete files no snapshot references any more (merged away or only in expired snapshots);
4. delete orphaned files: Parquet files no snapshot ever referenced, left by a killed run.

Each step is one lake write transaction (`warehouse.transaction`), so it takes its turn at the
lake's write lock and never races a run's commit. A file a run is writing (inside its transaction,
or a large source's rewritten table just before it) is younger than ORPHAN_GRACE, so it never looks
orphaned.

Deleted files may still be read by a query that started before they were unreferenced, so
they get a grace period: files unreferenced for at least UNREFERENCED_GRACE and since before
the current UTC day, orphans older than ORPHAN_GRACE. With a SQLite catalog DuckLake compares
its `older_than` cut-offs as text, which counts the cut-off's whole calendar day as older (its
later snapshots and scheduled files too); hence snapshots are expired by id, and scheduled
files by whole days.
"""


import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, time, timedelta, timezone

import dagster as dg
import duckdb

from .sql import ident, literal
from .warehouse import LAKE, Lake, WarehouseError, open_writer, transaction
from .warehouse_resource import WarehouseResource

ORPHAN_GRACE = timedelta(hours=1)  # a file younger than this may belong to a transaction about to commit
UNREFERENCED_GRACE = timedelta(hours=1)  # a query that began before a file was unreferenced may still read it
# DuckLake names every file it writes so; anything else under the data path is not the lake's.
LAKE_FILE = re.compile(r"^ducklake-[0-9a-f-]{36}(-delete)?\.parquet$")
JOB_NAME = "warehouse_maintenance"
SCHEDULE_NAME = "warehouse_maintenance_schedule"
ASSET_KEY = dg.AssetKey("warehouse_files")

Progress = Callable[[str], None]


class MaintenanceError(WarehouseError):
    """A maintenance step refused to run: the message says why and what to do."""


@dataclass
class LakeFootprint:
    """What the lake occupies at one moment."""

    files: int  # Parquet files under the data path (data and delete files, referenced or not)
    bytes: int
    live_files: int  # files the latest snapshot reads
    live_bytes: int
    snapshots: int


@dataclass
class MaintenanceReport:
    before: LakeFootprint
    after: LakeFootprint
    tables: int
    snapshots_expired: int
    unreferenced_files_deleted: int
    orphaned_files_deleted: int
    orphans_skipped: str = ""  # why orphaned files were left alone, if they were

    @property
    def files_deleted(self) -> int:
        return self.unreferenced_files_deleted + self.orphaned_files_deleted

    def metadata(self) -> dict[str, object]:
        values: dict[str, object] = {}
        for moment, footprint in (("before", self.before), ("after", self.after)):
            for name, value in asdict(footprint).items():
                values[f"{name}_{moment}"] = value
        values.update(
            tables=self.tables,
            snapshots_expired=self.snapshots_expired,
            files_deleted=self.files_deleted,
            unreferenced_files_deleted=self.unreferenced_files_deleted,
            orphaned_files_deleted=self.orphaned_files_deleted,
        )
        if self.orphans_skipped:
            values["orphans_skipped"] = self.orphans_skipped
        return values


def _lake_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' ORDER BY table_name",
        [LAKE],
    ).fetchall()
    return [r[0] for r in rows]


def _normal_path(path: str) -> str:
    """One spelling per file: a doubled separator must not make a live file look orphaned."""
    return re.sub(r"(?<!:)/{2,}", "/", path)


def _live_files(con: duckdb.DuckDBPyConnection, tables: list[str]) -> dict[str, int]:
    """Path -> size of every data and delete file the latest snapshot reads."""
    files: dict[str, int] = {}
    for table in tables:
        for data, data_size, delete, delete_size in con.execute(
            "SELECT data_file, data_file_size_bytes, delete_file, delete_file_size_bytes "
            f"FROM ducklake_list_files({literal(LAKE)}, {literal(table)})"
        ).fetchall():
            files[_normal_path(data)] = int(data_size or 0)
            if delete is not None:
                files[_normal_path(delete)] = int(delete_size or 0)
    return files


def footprint(con: duckdb.DuckDBPyConnection, lake: Lake) -> LakeFootprint:
    files, size = con.execute(
        f"SELECT count(*), coalesce(sum(size), 0) FROM read_blob({literal(lake.data_url + '**/*.parquet')})"
    ).fetchone()
    live = _live_files(con, _lake_tables(con))
    snapshots = con.execute(f"SELECT count(*) FROM {ident(LAKE)}.snapshots()").fetchone()[0]
    return LakeFootprint(int(files), int(size), len(live), sum(live.values()), int(snapshots))


def _compact(con: duckdb.DuckDBPyConnection, tables: list[str], progress: Progress) -> None:
    for table in tables:
        # One transaction per table and step keeps each turn at the write lock short.
        with transaction(con):
            con.execute(f"CALL ducklake_rewrite_data_files({literal(LAKE)}, {literal(table)})")
        with transaction(con):
            con.execute(f"CALL ducklake_merge_adjacent_files({literal(LAKE)}, {literal(table)})")
        progress(f"compacted {table}")


def _expire(con: duckdb.DuckDBPyConnection, cutoff: datetime) -> int:
    with transaction(con):
        # Ids chosen here, compared as timestamps (see the module docstring); never the latest.
        old = [
            r[0]
            for r in con.execute(
                f"SELECT snapshot_id FROM {ident(LAKE)}.snapshots() WHERE snapshot_time < ? "
                f"AND snapshot_id < (SELECT max(snapshot_id) FROM {ident(LAKE)}.snapshots()) ORDER BY snapshot_id",
                [cutoff],
            ).fetchall()
        ]
        if not old:
            return 0
        versions = ", ".join(str(int(v)) for v in old)
        return len(
            con.execute(f"SELECT * FROM ducklake_expire_snapshots({literal(LAKE)}, versions => [{versions}])").fetchall()
        )


def _delete_unreferenced(con: duckdb.DuckDBPyConnection, now: datetime, immediately: bool) -> int:
    if immediately:
        when = "cleanup_all => true"
    else:
        # Whole UTC days that ended at least UNREFERENCED_GRACE ago: the text comparison DuckLake
        # makes on a SQLite catalog is right for the very end of a day.
        last_day = (now - UNREFERENCED_GRACE).date() - timedelta(days=1)
        end_of_day = datetime.combine(last_day, time.max, tzinfo=timezone.utc)
        when = f"older_than => CAST({literal(end_of_day.isoformat())} AS TIMESTAMPTZ)"
    with transaction(con):
        return len(con.execute(f"SELECT path FROM ducklake_cleanup_old_files({literal(LAKE)}, {when})").fetchall())


def _delete_orphans(con: duckdb.DuckDBPyConnection, lake: Lake, now: datetime, immediately: bool) -> tuple[int, str]:
    """Delete files under the data path that no snapshot references; (count, why skipped)."""
    when = "cleanup_all => true" if immediately else (
        f"older_than => CAST({literal((now - ORPHAN_GRACE).isoformat())} AS TIMESTAMPTZ)"
    )
    call = f"ducklake_delete_orphaned_files({literal(LAKE)}, {when}"
    with transaction(con):
        candidates = [r[0] for r in con.execute(f"SELECT path FROM {call}, dry_run => true)").fetchall()]
        if not candidates:
            return 0, ""
        # DuckLake deletes everything under the data path it does not know: check first that the
        # list holds only its own files and none the lake reads.
        foreign = [p for p in candidates if not LAKE_FILE.match(p.rsplit("/", 1)[-1])]
        if foreign:
            return 0, (
                f"the data path {lake.data_url} holds {len(foreign)} file(s) the lake did not write "
                f"(e.g. {foreign[0]}): give warehouse.data_path a folder of its own, or move them away"
            )
        live = _live_files(con, _lake_tables(con))
        if any(_normal_path(p) in live for p in candidates):
            raise MaintenanceError(
                f"orphaned-file cleanup of {lake.data_url} would delete files the lake reads (the data path "
                "is spelled differently from the one the lake was created with): nothing was deleted; check "
                "warehouse.data_path"
            )
        return len(con.execute(f"SELECT path FROM {call})").fetchall()), ""


def maintain(
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    retention_days: int,
    *,
    now: datetime | None = None,
    delete_immediately: bool = False,
    progress: Progress | None = None,
) -> MaintenanceReport:
    """Compact, expire snapshots older than `retention_days`, delete unreferenced and orphaned files.

    `con` is a writer connection (open_writer). `delete_immediately` drops the grace periods
    (for a lake nobody is reading, e.g. right after a migration).
    """
    say = progress or (lambda _line: None)
    now = now or datetime.now(timezone.utc)
    before = footprint(con, lake)
    tables = _lake_tables(con)
    _compact(con, tables, say)
    expired = _expire(con, now - timedelta(days=retention_days))
    say(f"expired {expired} snapshot(s) older than {retention_days} day(s)")
    unreferenced = _delete_unreferenced(con, now, delete_immediately)
    orphans, skipped = _delete_orphans(con, lake, now, delete_immediately)
    say(f"deleted {unreferenced} unreferenced and {orphans} orphaned file(s)")
    if skipped:
        say(f"orphaned files not deleted: {skipped}")
    return MaintenanceReport(
        before=before,
        after=footprint(con, lake),
        tables=len(tables),
        snapshots_expired=expired,
        unreferenced_files_deleted=unreferenced,
        orphaned_files_deleted=orphans,
        orphans_skipped=skipped,
    )


def maintain_lake(lake: Lake, retention_days: int, **options: object) -> MaintenanceReport:
    """`maintain` on a connection of its own."""
    with open_writer(lake) as con:
        return maintain(con, lake, retention_days, **options)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- Dagster


class MaintenanceConfig(dg.Config):
    """Options of one maintenance run (the schedule uses the defaults)."""

    delete_immediately: bool = False  # skip the grace periods: only when nobody reads the lake


def build_warehouse_maintenance(cron: str) -> dg.Definitions:
    """The `warehouse_files` asset, its `warehouse_maintenance` job and the schedule on `cron` (UTC)."""

    @dg.asset(
        key=ASSET_KEY,
        group_name="warehouse",
        kinds={"ducklake"},
        description=(
            "The lake's Parquet files and snapshots. Materializing it compacts small files, expires "
            "snapshots older than snapshot_retention_days and deletes files nothing references."
        ),
    )
    def warehouse_files(
        context: dg.AssetExecutionContext, config: MaintenanceConfig, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        lake = warehouse.lake
        if not lake.exists:
            context.log.info(f"no lake at {lake.shown} yet: nothing to maintain")
            return dg.MaterializeResult(metadata={"skipped": "no lake yet"})
        with warehouse.get_connection() as con:
            report = maintain(
                con, lake, lake.retention_days, delete_immediately=config.delete_immediately, progress=context.log.info
            )
        if report.orphans_skipped:
            context.log.warning(f"orphaned files not deleted: {report.orphans_skipped}")
        return dg.MaterializeResult(metadata=report.metadata())

    job = dg.define_asset_job(
        JOB_NAME,
        selection=dg.AssetSelection.assets(ASSET_KEY),
        executor_def=dg.in_process_executor,
        description="Compact the lake's files, expire old snapshots and delete unreferenced files.",
    )
    schedule = dg.ScheduleDefinition(
        name=SCHEDULE_NAME,
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Runs warehouse_maintenance on warehouse.maintenance_schedule (UTC).",
    )
    return dg.Definitions(assets=[warehouse_files], jobs=[job], schedules=[schedule])
