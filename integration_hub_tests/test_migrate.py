"""`integration-hub migrate`: a pre-lake warehouse file (plain DuckDB) copied into the lake, verified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import pytest

from integration_hub.cli.main import main
from integration_hub.core.migrate import fingerprint
from integration_hub.core.warehouse import open_reader
from integration_hub_tests.support import Landing, query, run_job

USERS = 2_000

# The schema the previous version wrote: one DuckDB file, user_id PRIMARY KEY, a view.
OLD_SCHEMA = f"""
CREATE TABLE attributes_crm (
    user_id VARCHAR PRIMARY KEY, plan VARCHAR, support_tickets DOUBLE, active BOOLEAN, signup_date DATE,
    last_login_at TIMESTAMPTZ, _updated_at TIMESTAMPTZ, _source VARCHAR
);
INSERT INTO attributes_crm
SELECT 'user' || i || '@example.com',
       CASE WHEN i % 7 = 0 THEN NULL ELSE ['gold', 'free', 'pro'][i % 3 + 1] END,
       CASE WHEN i % 5 = 0 THEN NULL ELSE i / 4 END,
       CASE WHEN i % 11 = 0 THEN NULL ELSE i % 2 = 0 END,
       CASE WHEN i % 13 = 0 THEN NULL ELSE DATE '2023-01-01' + CAST(i AS INTEGER) END,
       CASE WHEN i % 3 = 0 THEN NULL ELSE TIMESTAMPTZ '2024-05-01 10:00:00.123456+00' + to_seconds(i * 61) END,
       TIMESTAMPTZ '2024-06-01 00:00:00+00' + to_seconds(i),
       's3://acme/inbound/crm/success/users_' || (i % 4) || '.csv'
  FROM range({USERS}) AS r(i);
CREATE TABLE integration_runs (
    run_id VARCHAR, integration VARCHAR, kind VARCHAR, source VARCHAR, started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ, status VARCHAR, rows_read BIGINT, rows_applied BIGINT, rows_rejected BIGINT,
    properties_imported INTEGER, message VARCHAR, dagster_run_id VARCHAR, details JSON
);
INSERT INTO integration_runs VALUES
    ('r1', 'crm', 'csv', 's3://acme/inbound/crm/users_0.csv', '2024-06-01 00:00:00+00', '2024-06-01 00:00:05+00',
     'success', 1000, 1000, 0, 5, '', 'd1', '{{"key": "crm/users_0.csv", "size_bytes": 1234}}'),
    ('r2', 'crm', 'csv', 's3://acme/inbound/crm/users_1.csv', '2024-06-02 00:00:00+00', NULL,
     'partial', 1001, 1000, 1, 5, '1 row rejected (see rejected_rows)', NULL, NULL);
CREATE TABLE rejected_rows (
    run_id VARCHAR, integration VARCHAR, source VARCHAR, row_number BIGINT, user_id VARCHAR,
    column_name VARCHAR, value VARCHAR, reason VARCHAR
);
INSERT INTO rejected_rows VALUES
    ('r2', 'crm', 's3://acme/inbound/crm/users_1.csv', 7, 'x@example.com', 'tickets', 'many', 'not a number'),
    ('r2', 'crm', 's3://acme/inbound/crm/users_1.csv', 7, 'x@example.com', 'tickets', 'many', 'not a number');
CREATE TABLE processed_files (
    integration VARCHAR, key VARCHAR, sha256 VARCHAR, size_bytes BIGINT, status VARCHAR, run_id VARCHAR,
    processed_at TIMESTAMPTZ
);
INSERT INTO processed_files VALUES
    ('crm', 'crm/users_0.csv', repeat('a', 64), 1234, 'success', 'r1', '2024-06-01 00:00:05+00'),
    ('crm', 'crm/users_1.csv', repeat('b', 64), 1300, 'partial', 'r2', '2024-06-02 00:00:05+00');
CREATE TABLE report_active_users AS SELECT user_id, plan FROM attributes_crm WHERE active;
CREATE TABLE salesforce_sync_runs (
    run_id VARCHAR, integration VARCHAR, report VARCHAR, object VARCHAR, started_at TIMESTAMPTZ,
    runtime_seconds DOUBLE, status VARCHAR, rows BIGINT, updated BIGINT, full_resync BOOLEAN, api_calls JSON,
    message VARCHAR
);
INSERT INTO salesforce_sync_runs VALUES
    ('s1', 'to_sf', 'active_users', 'Contact', '2024-06-03 09:00:00+00', 12.5, 'Completed', 10, 9, false,
     '{{"query": 1, "composite": 2}}', NULL);
CREATE TABLE salesforce_sync_results (
    run_id VARCHAR, integration VARCHAR, report_key VARCHAR, salesforce_id VARCHAR, outcome VARCHAR, error VARCHAR
);
INSERT INTO salesforce_sync_results VALUES ('s1', 'to_sf', 'user2@example.com', '003000000000001AAA', 'updated', NULL);
CREATE TABLE salesforce_snapshots (
    integration VARCHAR, match_key VARCHAR, report_key VARCHAR, salesforce_ids VARCHAR[], target VARCHAR,
    payload VARCHAR, run_id VARCHAR, sent_at TIMESTAMPTZ
);
INSERT INTO salesforce_snapshots VALUES
    ('to_sf', 'user2@example.com', 'user2@example.com', ['003000000000001AAA', '003000000000002AAA'],
     'Contact.Email', '{{"Plan__c": "pro"}}', 's1', '2024-06-03 09:00:10+00');
CREATE VIEW user_profiles AS SELECT user_id, plan FROM attributes_crm;
"""
OLD_TABLES = [
    "attributes_crm", "integration_runs", "processed_files", "rejected_rows", "report_active_users",
    "salesforce_snapshots", "salesforce_sync_results", "salesforce_sync_runs",
]  # fmt: skip


def old_warehouse(path: Path) -> Path:
    with duckdb.connect(str(path)) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(OLD_SCHEMA)
    return path


def table_rows(con: duckdb.DuckDBPyConnection, table: str, columns: str) -> list[tuple]:
    return sorted(con.execute(f'SELECT {columns} FROM "{table}"').fetchall(), key=repr)


def run_cli(landing: Landing, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DAGSTER_HOME": str(landing.root / "dagster_home")}
    return subprocess.run(
        [sys.executable, "-m", "integration_hub.cli.main", "--catalog", str(landing.catalog_path), *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_migrate_copies_every_table_verified_and_refuses_a_second_time(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    old = old_warehouse(local_landing.root / "warehouse.duckdb")
    before = old.read_bytes()
    with duckdb.connect(str(old), read_only=True) as original:
        total = sum(original.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in OLD_TABLES)

    done = run_cli(local_landing, "migrate", str(old))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"migrating 8 tables from {old} into the lake {catalog.warehouse_catalog_path}"
    assert f"  attributes_crm: {USERS:,} rows, content hash ok" in lines
    assert "  rejected_rows: 2 rows, content hash ok" in lines  # identical rows are both kept
    assert lines[-1] == (
        f"migrated 8 tables ({total:,} rows) into the lake {catalog.warehouse_catalog_path}; {old} was not "
        "changed: keep it until you trust the lake"
    )
    assert done.stderr == ""
    assert old.read_bytes() == before, "the old file is opened read-only"

    with duckdb.connect(str(old), read_only=True) as original, open_reader(catalog) as lake:
        assert lake is not None
        original.execute("SET TimeZone = 'UTC'")
        for table in OLD_TABLES:
            old_types = original.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index", [table]
            ).fetchall()
            names = [name for name, _ in old_types]
            # Same types; new catalog columns (processed_files.moved_to here) are added after them.
            assert lake.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = 'lake' AND table_name = ? "
                "ORDER BY column_index",
                [table],
            ).fetchall()[: len(names)] == old_types, table
            columns = ", ".join(f'"{n}"' for n in names)
            assert table_rows(lake, table, columns) == table_rows(original, table, columns), table
        # No PRIMARY KEY in the lake; the view comes from the catalog, with every property.
        assert lake.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE database_name = 'lake' AND constraint_type = 'PRIMARY KEY'"
        ).fetchall() == [(0,)]
        assert lake.execute(
            "SELECT plan, support_tickets, signup_date FROM user_profiles WHERE user_id = 'user4@example.com'"
        ).fetchall() == [("free", 1.0, date(2023, 1, 5))]

    # A run applies on top of the migrated table: one user updated, one new; user_profiles sees both.
    local_landing.put(
        "crm/new.csv",
        "email,Plan Tier,tickets,is_active,signup,last_login\n"
        "user4@example.com,gold,9,yes,2023-01-05,\nnew@example.com,free,1,no,2024-01-01,\n",
    )
    assert run_job(catalog, "crm").success
    assert query(catalog, "SELECT count(*), count(DISTINCT user_id) FROM attributes_crm") == [(USERS + 1, USERS + 1)]
    assert query(catalog, "SELECT user_id, plan FROM user_profiles WHERE user_id IN "
                          "('user4@example.com', 'new@example.com') ORDER BY user_id") == [  # fmt: skip
        ("new@example.com", "free"), ("user4@example.com", "gold")
    ]

    again = run_cli(local_landing, "migrate", str(old), "--json")
    assert again.returncode == 1 and again.stdout == ""
    [line] = again.stderr.splitlines()
    assert line.startswith(f"error: the lake {catalog.warehouse_catalog_path} already holds data (attributes_crm (")
    assert "migrate only fills an empty lake" in line and "point warehouse.catalog and warehouse.data_path" in line
    assert query(catalog, "SELECT count(*) FROM attributes_crm") == [(USERS + 1,)]  # unchanged


def test_migrate_json_reports_each_table(local_landing: Landing, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = local_landing.write_catalog()
    old = old_warehouse(local_landing.root / "warehouse.duckdb")
    assert main(["--catalog", str(local_landing.catalog_path), "migrate", str(old), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["table"] for r in result] == OLD_TABLES
    assert all(r["hash_ok"] is True for r in result)
    assert {r["table"]: r["rows"] for r in result}["attributes_crm"] == USERS
    assert query(catalog, "SELECT count(*) FROM integration_runs") == [(2,)]


def test_the_content_hash_sees_one_changed_value() -> None:
    with duckdb.connect() as con:
        con.execute("CREATE TABLE a (id VARCHAR, seen TIMESTAMPTZ, tags VARCHAR[], d JSON)")
        con.execute("CREATE TABLE b AS SELECT * FROM a")
        rows = "('x', '2024-01-01 00:00:00.000001+00', ['p', 'q'], '{\"k\": 1}'), ('y', NULL, NULL, NULL)"
        con.execute(f"INSERT INTO a VALUES {rows}")
        con.execute(f"INSERT INTO b SELECT * FROM (VALUES {rows}) ORDER BY 1 DESC")  # other order, same rows
        assert fingerprint(con, "memory", "a") == fingerprint(con, "memory", "b")
        con.execute("UPDATE b SET seen = seen + INTERVAL 1 MICROSECOND WHERE id = 'x'")
        assert fingerprint(con, "memory", "a") != fingerprint(con, "memory", "b")
        con.execute("UPDATE b SET seen = seen - INTERVAL 1 MICROSECOND WHERE id = 'x'")
        con.execute("UPDATE b SET tags = ['q', 'p'] WHERE id = 'x'")
        assert fingerprint(con, "memory", "a") != fingerprint(con, "memory", "b")


def test_migrate_errors_are_one_line_each(local_landing: Landing, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = local_landing.write_catalog()
    root = local_landing.root

    def migrate(path: Path) -> str:
        code = main(["--catalog", str(local_landing.catalog_path), "migrate", str(path)])
        out, err = capsys.readouterr()
        assert code == 1 and out == ""
        [line] = err.splitlines()
        return line

    missing = root / "nowhere.duckdb"
    assert migrate(missing) == (
        f"error: {missing} does not exist: give the path of the old warehouse file (what the catalog's "
        "`warehouse:` setting was before the lake, e.g. data/warehouse.duckdb)"
    )
    assert not catalog.warehouse_catalog_path.exists(), "no lake is created for a mistyped path"

    text = root / "users.csv"
    text.write_text("email,plan\na@x.com,gold\n")
    assert migrate(text) == (
        f"error: {text} is not a DuckDB database file: give the old warehouse file (a .duckdb file written by "
        "integration_hub before the lake)"
    )

    old = old_warehouse(root / "warehouse.duckdb")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(old)!r}); print('open', flush=True); "
                               "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        line = migrate(old)
    finally:
        holder.kill()
        holder.wait()
    assert line == (
        f"error: {old} is in use by another process (PID {holder.pid}): stop it (the old Dagster daemon or "
        "webserver, or a DuckDB session with the file open) and run migrate again"
    )
    # Once the other process is gone, the same file migrates.
    assert main(["--catalog", str(local_landing.catalog_path), "migrate", str(old)]) == 0
    assert query(catalog, "SELECT count(*) FROM attributes_crm") == [(USERS,)]
