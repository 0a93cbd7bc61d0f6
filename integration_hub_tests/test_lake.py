"""The warehouse as a DuckLake: creation and bad paths, analysts' `sql` and `history`, readers during a write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration_hub.cli.main import main
from integration_hub.core.catalog import load_catalog
from integration_hub.core.ingest import RunRecord, apply_source, new_run_id, now_utc
from integration_hub.core.maintenance import maintain_lake
from integration_hub.core.warehouse import (
    Lake,
    LakeError,
    open_reader,
    open_writer,
    prepare_lake,
    transaction,
)
from integration_hub_tests.support import Landing, query, run_job

HEADER = "email,Plan Tier,tickets,is_active,signup,last_login\n"


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()  # not what earlier runs logged
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def catalog_with_lake(root: Path, catalog: str, data_path: str) -> Path:
    path = root / "integrations.yaml"
    path.write_text(yaml.safe_dump({"warehouse": {"catalog": catalog, "data_path": data_path}}))
    return path


# ---------------------------------------------------------------------------- creation and bad paths


def test_a_new_lake_is_created_on_first_use(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    assert not catalog.warehouse_catalog_path.exists()
    local_landing.put("crm/a.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    assert catalog.warehouse_catalog_path.is_file()
    parquet = list(catalog.warehouse_data_path.rglob("*.parquet"))
    assert parquet, "the attribute rows live in Parquet files under the data path"
    assert query(catalog, "SELECT user_id, plan FROM attributes_crm") == [("a@x.com", "gold")]


def test_a_current_schema_takes_no_snapshot_and_a_new_property_adds_its_column(local_landing: Landing) -> None:
    from integration_hub.core.warehouse import ensure_schema
    from integration_hub_tests.support import CRM_INTEGRATION

    catalog = local_landing.write_catalog()
    local_landing.put("crm/a.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\n")
    assert run_job(catalog, "crm").success

    def snapshots() -> int:
        return query(catalog, "SELECT count(*) FROM lake.snapshots()")[0][0]

    before = snapshots()
    with open_writer(catalog) as con:
        ensure_schema(con, catalog)  # nothing changed: no empty snapshot
    assert snapshots() == before

    extra = {"column": "region", "name": "region", "type": "string"}
    catalog = local_landing.write_catalog({**CRM_INTEGRATION, "properties": [*CRM_INTEGRATION["properties"], extra]})
    with open_writer(catalog) as con:
        ensure_schema(con, catalog)
    assert snapshots() == before + 1
    assert query(catalog, "SELECT user_id, plan, region FROM attributes_crm") == [("a@x.com", "gold", None)]
    assert query(catalog, "SELECT region FROM user_profiles") == [(None,)]


def test_a_missing_parent_folder_is_one_line_naming_the_path_and_fix(tmp_path: Path, capsys) -> None:
    path = catalog_with_lake(tmp_path, "nowhere/catalog.sqlite", "lake/")
    lake = Lake.of(load_catalog(path))
    with pytest.raises(LakeError) as error:
        prepare_lake(lake)
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere") in message and "mkdir -p" in message and "warehouse.catalog" in message
    path = catalog_with_lake(tmp_path, "catalog.sqlite", "missing/lake/")
    with pytest.raises(LakeError, match=r"data folder .*missing/lake.* does not exist.*warehouse.data_path"):
        prepare_lake(Lake.of(load_catalog(path)))


def test_a_catalog_file_that_is_not_a_ducklake_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "notes.sqlite").write_text("these are my notes, not a database\n")
    path = catalog_with_lake(tmp_path, "notes.sqlite", "lake/")
    with pytest.raises(LakeError, match="is not a DuckLake catalog"):
        with open_writer(load_catalog(path)):
            pass
    assert (tmp_path / "notes.sqlite").read_text() == "these are my notes, not a database\n"
    import sqlite3

    with sqlite3.connect(tmp_path / "other.sqlite") as db:
        db.execute("CREATE TABLE contacts (name TEXT)")
    path = catalog_with_lake(tmp_path, "other.sqlite", "lake/")
    with pytest.raises(LakeError, match="a SQLite database but not a DuckLake catalog"):
        with open_writer(load_catalog(path)):
            pass


def test_a_data_path_that_is_a_file_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "lake").write_text("a file where the data folder should be")
    path = catalog_with_lake(tmp_path, "catalog.sqlite", "lake/")
    with pytest.raises(LakeError, match=r"data folder .*lake cannot be written.*warehouse.data_path"):
        prepare_lake(Lake.of(load_catalog(path)))


def test_the_old_single_file_setting_says_how_to_migrate(tmp_path: Path, capsys) -> None:
    path = tmp_path / "integrations.yaml"
    path.write_text("warehouse: data/warehouse.duckdb\n")
    code, _, err = cli(capsys, "integrations", "--catalog", str(path))
    assert code == 2
    assert "integration-hub migrate data/warehouse.duckdb" in err and "data_path" in err


# ---------------------------------------------------------------------------- sql


def test_sql_prints_a_table_csv_and_json(local_landing: Landing, capsys) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/a.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\nb@x.com,,2,no,2024-02-01,\n")
    assert run_job(catalog, "crm").success
    at = ["--catalog", str(local_landing.catalog_path)]
    code, out, _ = cli(capsys, "sql", "SELECT user_id, plan FROM user_profiles ORDER BY user_id", *at)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["user_id", "plan"] and lines[2].split() == ["a@x.com", "gold"]
    assert lines[3].split() == ["b@x.com", "-"]
    code, out, _ = cli(capsys, "sql", "SELECT user_id, plan, support_tickets, active FROM user_profiles ORDER BY 1", "--csv", *at)
    assert out.splitlines() == ["user_id,plan,support_tickets,active", "a@x.com,gold,1.0,true", "b@x.com,,2.0,false"]
    code, out, _ = cli(capsys, "sql", "SELECT user_id, signup_date FROM user_profiles ORDER BY 1", "--json", *at)
    assert json.loads(out) == [
        {"user_id": "a@x.com", "signup_date": "2024-01-01"},
        {"user_id": "b@x.com", "signup_date": "2024-02-01"},
    ]


@pytest.mark.parametrize(
    ("query_text", "words"),
    [
        ("DELETE FROM attributes_crm", "only queries run here (got a DELETE statement)"),
        ("SELECT 1; SELECT 2", "exactly one query (got 2 statements)"),
        ("SELEC 1", "does not parse"),
        ("SELECT * FROM no_such_table", "the query failed"),
        ("SELECT * FROM read_csv('/etc/hostname')", "the query failed"),
        ("COPY (SELECT 1) TO 'out.csv'", "only queries run here"),
    ],
)
def test_sql_runs_one_read_only_query_and_fails_in_one_line(local_landing: Landing, capsys, query_text, words) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/a.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    code, out, err = cli(capsys, "sql", query_text, "--catalog", str(local_landing.catalog_path))
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and words in err
    assert query(catalog, "SELECT count(*) FROM attributes_crm") == [(1,)]


def test_sql_attach_statements_open_the_lake_from_plain_duckdb(local_landing: Landing, capsys) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/a.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    os.chdir(local_landing.root)
    code, out, _ = cli(capsys, "sql", "--attach")
    assert code == 0
    statements = out.strip().splitlines()
    assert statements[-1] == "USE lake;" and any("READ_ONLY" in s for s in statements)
    assert "catalog.sqlite" in out and str(local_landing.root) not in out  # relative to the project folder
    # A separate Python process with nothing of ours imported, as a notebook would run them.
    from integration_hub.core.warehouse import extension_directory

    script = (
        "import duckdb, sys\n"
        f"con = duckdb.connect(config={{'extension_directory': {extension_directory()!r}}})\n"
        "for s in sys.stdin.read().splitlines(): con.execute(s)\n"
        "print(con.execute('SELECT user_id, plan FROM user_profiles').fetchall())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], input=out, capture_output=True, text=True,
                          cwd=local_landing.root, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('a@x.com', 'gold')]"


# ---------------------------------------------------------------------------- history


def test_history_lists_each_value_with_when_and_which_file(local_landing: Landing, capsys) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/1.csv", HEADER + "a@x.com,free,1,yes,2024-01-01,\nb@x.com,free,5,no,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    local_landing.put("crm/2.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\n")  # only plan changes
    assert run_job(catalog, "crm").success
    local_landing.put("crm/3.csv", HEADER + "b@x.com,pro,6,no,2024-01-01,\n")  # another user
    assert run_job(catalog, "crm").success
    local_landing.put("crm/4.csv", HEADER + "a@x.com,gold,2,yes,2024-01-01,\n")  # tickets change
    assert run_job(catalog, "crm").success
    code, out, _ = cli(capsys, "history", "a@x.com", "--json", "--catalog", str(local_landing.catalog_path))
    assert code == 0
    changes = json.loads(out)
    plan = [(c["value"], c["source"].rsplit("/", 1)[-1]) for c in changes if c["attribute"] == "plan"]
    assert plan == [("free", "1.csv"), ("gold", "2.csv")]
    tickets = [(c["value"], c["source"].rsplit("/", 1)[-1]) for c in changes if c["attribute"] == "support_tickets"]
    assert tickets == [(1.0, "1.csv"), (2.0, "4.csv")]
    assert {c["attribute"] for c in changes} == {"plan", "support_tickets", "active", "signup_date"}
    times = [c["changed_at"] for c in changes if c["attribute"] == "plan"]
    assert times == sorted(times) and times[0] < times[1]
    code, out, _ = cli(capsys, "history", "a@x.com", "--integration", "crm", "--catalog", str(local_landing.catalog_path))
    assert code == 0 and "plan" in out and "gold" in out and "2.csv" in out
    code, out, _ = cli(capsys, "history", "nobody@x.com", "--catalog", str(local_landing.catalog_path))
    assert code == 0 and "no attribute values" in out


def test_history_survives_a_large_source_rewriting_the_table(local_landing: Landing, capsys, monkeypatch) -> None:
    import integration_hub.core.ingest as ingest

    monkeypatch.setattr(ingest, "REWRITE_MIN_ROWS", 2)  # every source of 2+ rows rewrites the table
    catalog = local_landing.write_catalog()
    local_landing.put("crm/1.csv", HEADER + "a@x.com,free,1,yes,2024-01-01,\nb@x.com,free,5,no,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    local_landing.put("crm/2.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\nc@x.com,pro,1,yes,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    assert query(catalog, "SELECT user_id, plan FROM attributes_crm ORDER BY 1") == [
        ("a@x.com", "gold"), ("b@x.com", "free"), ("c@x.com", "pro")
    ]
    code, out, _ = cli(capsys, "history", "b@x.com", "--json", "--catalog", str(local_landing.catalog_path))
    plan = [(c["value"], c["source"].rsplit("/", 1)[-1]) for c in json.loads(out) if c["attribute"] == "plan"]
    assert plan == [("free", "1.csv")]  # copied by the rewrite, not changed by it
    code, out, _ = cli(capsys, "history", "a@x.com", "--json", "--catalog", str(local_landing.catalog_path))
    plan = [(c["value"], c["source"].rsplit("/", 1)[-1]) for c in json.loads(out) if c["attribute"] == "plan"]
    assert plan == [("free", "1.csv"), ("gold", "2.csv")]


def test_a_lake_writes_small_row_groups_by_its_inserts_and_its_rewrites(local_landing: Landing, monkeypatch) -> None:
    """A lake made before the file options gets them at its next run; DuckLake's inserts and a large
    source's rewrite both write row groups of PARQUET_ROW_GROUP_ROWS."""
    import integration_hub.core.ingest as ingest
    from integration_hub.core.warehouse import LAKE_FILE_OPTIONS, PARQUET_ROW_GROUP_ROWS

    catalog = local_landing.write_catalog()
    lake = Lake.of(catalog)
    with open_writer(lake) as con:  # a lake as an earlier version left it: DuckLake's own defaults
        assert not {name for name, in con.execute("SELECT option_name FROM lake.options()").fetchall()} & set(LAKE_FILE_OPTIONS)

    def layout() -> tuple[dict[str, str], list[int]]:
        with open_reader(lake, private=True) as con:
            assert con is not None
            options = dict(con.execute("SELECT option_name, value FROM lake.options()").fetchall())
            files = [f for f, in con.execute("SELECT data_file FROM ducklake_list_files('lake', 'attributes_crm')").fetchall()]
            groups = con.execute(
                f"SELECT row_group_num_rows FROM parquet_metadata({files!r}) WHERE path_in_schema = 'user_id'"
            ).fetchall()
            return options, sorted(rows for rows, in groups)

    rows = 3 * PARQUET_ROW_GROUP_ROWS + 100

    def users(plan: str) -> str:  # sorted by user id, as a lookup's pruning would have it
        return HEADER + "".join(f"u{n:06d}@x.com,{plan},{n % 9},yes,2024-01-01,\n" for n in range(rows))

    monkeypatch.setattr(ingest, "REWRITE_MIN_ROWS", 10**9)  # a MERGE: DuckLake writes the files
    local_landing.put("crm/merged.csv", users("free"))
    assert run_job(catalog, "crm").success
    options, groups = layout()
    assert {name: options.get(name) for name in LAKE_FILE_OPTIONS} == {name: shown for name, (_, shown) in LAKE_FILE_OPTIONS.items()}
    assert sum(groups) == rows and max(groups) <= PARQUET_ROW_GROUP_ROWS, groups

    monkeypatch.setattr(ingest, "REWRITE_MIN_ROWS", 2)  # the table written anew, by our own COPY
    local_landing.put("crm/rewritten.csv", users("gold"))
    assert run_job(catalog, "crm").success
    _, groups = layout()
    assert sum(groups) == rows and max(groups) <= PARQUET_ROW_GROUP_ROWS, groups

    assert query(catalog, "SELECT plan FROM attributes_crm WHERE user_id = 'u020000@x.com'") == [("gold",)]


def test_user_profiles_as_of_a_timestamp(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/1.csv", HEADER + "a@x.com,free,1,yes,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    between = query(catalog, "SELECT now()")[0][0]
    time.sleep(0.05)
    local_landing.put("crm/2.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    as_of = f"SELECT plan FROM user_profiles AT (TIMESTAMP => TIMESTAMPTZ '{between.isoformat()}')"
    assert query(catalog, as_of) == [("free",)]
    assert query(catalog, "SELECT plan FROM user_profiles") == [("gold",)]


# ---------------------------------------------------------------------------- readers and writers


def test_a_reader_sees_the_last_snapshot_during_a_write_and_never_delays_it(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/1.csv", HEADER + "a@x.com,free,1,yes,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    integration = catalog.integration("crm")
    with open_reader(catalog) as analyst:  # an analyst's connection, held open throughout
        assert analyst is not None
        with open_writer(catalog) as con:
            run = RunRecord(run_id=new_run_id(), integration="crm", kind="csv", source="big", started_at=now_utc())
            source = (
                "SELECT 'user' || i || '@x.com' AS email, 'pro' AS \"Plan Tier\", '1' AS tickets, 'yes' AS is_active, "
                "'2024-01-01' AS signup, NULL AS last_login FROM range(50000) t(i)"
            )
            seen: list[int] = []

            def during(con, run) -> None:  # inside the write transaction, before its commit
                started = time.monotonic()
                seen.append(analyst.execute("SELECT count(*) FROM user_profiles").fetchone()[0])
                seen.append(time.monotonic() - started)

            apply_source(con, integration, source, run, max_rejected_ratio=0.1, before_commit=during)
        assert seen[0] == 1 and seen[1] < 2.0  # the previous snapshot, at once
        assert analyst.execute("SELECT count(*) FROM user_profiles").fetchone()[0] == 50001


def test_readers_of_one_process_share_a_duckdb_and_still_see_every_commit(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "catalog.sqlite", tmp_path / "lake")
    with open_writer(lake) as con, transaction(con):
        con.execute("CREATE TABLE t (n INTEGER)")
        con.execute("INSERT INTO t VALUES (1)")
    with open_reader(lake) as first:
        assert first is not None and first.execute("SELECT n FROM t").fetchall() == [(1,)]
        first.execute("SET VARIABLE seen_by = 'first'")  # this connection's own, not its neighbours'
    with open_writer(lake) as con, transaction(con):  # a new table, a new column and a row since
        con.execute("CREATE TABLE u AS SELECT 'x' AS s")
        con.execute("ALTER TABLE t ADD COLUMN m INTEGER")
        con.execute("INSERT INTO t VALUES (2, 3)")
    with open_reader(lake) as second:
        assert second is not None
        assert second.execute("SELECT * FROM t ORDER BY n").fetchall() == [(1, None), (2, 3)]
        assert second.execute("SELECT s FROM u").fetchall() == [("x",)]
        assert second.execute("SELECT getvariable('seen_by')").fetchone() == (None,)
        assert second.execute("SELECT current_setting('TimeZone')").fetchone()[0] in ("UTC", "Etc/UTC")

    # Readers in threads at once, each with its own connection.
    answers: list[Any] = []

    def count() -> None:
        with open_reader(lake) as con:
            assert con is not None
            answers.append(con.execute("SELECT count(*) FROM range(200000) JOIN t ON true").fetchone()[0])

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [400000] * 4


def test_a_reader_in_use_outlives_the_readers_of_other_lakes_and_a_lake_made_anew_is_read_anew(tmp_path: Path) -> None:
    lakes = [Lake(tmp_path / f"{n}/catalog.sqlite", tmp_path / f"{n}/lake") for n in range(4)]
    for n, lake in enumerate(lakes):
        lake.catalog_path.parent.mkdir()
        with open_writer(lake) as con, transaction(con):
            con.execute(f"CREATE TABLE t AS SELECT {n} AS n")
    with open_reader(lakes[0]) as held:
        assert held is not None
        for lake in lakes[1:]:  # more lakes than a process keeps: the unused ones are closed
            with open_reader(lake) as con:
                assert con is not None and con.execute("SELECT n FROM t").fetchone() is not None
        assert held.execute("SELECT n FROM t").fetchall() == [(0,)]

    # The same paths, another lake: what the earlier DuckDB attached is not what is read now.
    import shutil

    shutil.rmtree(lakes[0].catalog_path.parent)
    lakes[0].catalog_path.parent.mkdir()
    with open_writer(lakes[0]) as con, transaction(con):
        con.execute("CREATE TABLE t AS SELECT 'made anew' AS n")
    with open_reader(lakes[0]) as con:
        assert con is not None and con.execute("SELECT n FROM t").fetchall() == [("made anew",)]


def test_writers_of_one_process_start_clean_after_each_other_after_an_error_and_on_a_lake_made_anew(
    tmp_path: Path,
) -> None:
    lake = Lake(tmp_path / "lake_a/catalog.sqlite", tmp_path / "lake_a/lake")
    lake.catalog_path.parent.mkdir()
    with open_writer(lake) as con:
        con.execute("CREATE TEMP TABLE _stage AS SELECT 1 AS n")
        with transaction(con):
            con.execute("CREATE TABLE t AS SELECT 1 AS n")
    with open_writer(lake) as con:  # a session of its own: none of the last writer's temporary tables
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone() == (0,)
        assert con.execute("SELECT current_setting('TimeZone')").fetchone()[0] in ("UTC", "Etc/UTC")
        with transaction(con):
            con.execute("INSERT INTO t VALUES (2)")

    # A writer that fails after changing a setting of its whole DuckDB: the next starts from the defaults.
    with pytest.raises(RuntimeError, match="a step failed"), open_writer(lake) as con:
        con.execute("SET preserve_insertion_order = false")
        raise RuntimeError("a step failed")
    with open_writer(lake) as con:
        assert con.execute("SELECT current_setting('preserve_insertion_order')").fetchone() == (True,)
        assert con.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,)]

    # The same paths, another lake: the writer writes the new one, not what an earlier DuckDB attached.
    import shutil

    shutil.rmtree(lake.catalog_path.parent)
    lake.catalog_path.parent.mkdir()
    with open_writer(lake) as con, transaction(con):
        con.execute("CREATE TABLE t AS SELECT 'made anew' AS n")
    with open_reader(lake, private=True) as con:
        assert con is not None and con.execute("SELECT n FROM t").fetchall() == [("made anew",)]


def test_a_duckdb_done_with_one_lake_serves_the_next_with_nothing_of_the_first_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from integration_hub.core import warehouse

    loaded: list[str] = []
    load = warehouse._load_extensions
    monkeypatch.setattr(warehouse, "_load_extensions", lambda con, names: (loaded.extend(names), load(con, names)))
    lakes = [Lake(tmp_path / f"{n}/catalog.sqlite", tmp_path / f"{n}/lake") for n in range(4)]
    for n, lake in enumerate(lakes):
        lake.catalog_path.parent.mkdir()
        with open_writer(lake) as con, transaction(con):
            con.execute(f"CREATE TABLE t AS SELECT {n} AS n")
            if n == 0:  # what a writer may leave in its whole DuckDB
                con.execute("CREATE TEMPORARY SECRET leftover (TYPE s3, KEY_ID 'k', SECRET 's')")
                con.execute("SET parquet_metadata_cache = true")
                con.execute(f"SET temp_directory = '{tmp_path / 'scratch'}'")
    # Each lake had a writer; the process keeps two, so the first two went back as spare DuckDBs.
    fresh = loaded.count("ducklake")
    for lake in lakes:
        with open_reader(lake) as con:
            assert con is not None
            databases = {row[0] for row in con.execute("SELECT database_name FROM duckdb_databases() WHERE NOT internal").fetchall()}
            assert databases == {"memory", "lake", "__ducklake_metadata_lake"}
            assert con.execute("SELECT count(*) FROM duckdb_secrets()").fetchone() == (0,)
            assert con.execute("SELECT current_setting('parquet_metadata_cache')").fetchone() == (True,)  # a reader's own
            assert con.execute("SELECT current_setting('temp_directory')").fetchone()[0] != str(tmp_path / "scratch")
            assert con.execute("SELECT n FROM t").fetchall() == [(lakes.index(lake),)]
    assert loaded.count("ducklake") - fresh < len(lakes), "no spare DuckDB was used again"


def test_writes_of_two_connections_take_turns_and_both_commit(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    errors: list[BaseException] = []

    def write(table: str) -> None:
        try:
            with open_writer(catalog) as con:
                for n in range(5):
                    with transaction(con):
                        con.execute(f"CREATE TABLE IF NOT EXISTS {table} (n INTEGER)")
                        con.execute(f"INSERT INTO {table} VALUES ({n})")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in ("lefts", "rights")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert query(catalog, "SELECT (SELECT count(*) FROM lefts), (SELECT count(*) FROM rights)") == [(5, 5)]


def staged_files(temp: Path) -> list[Path]:
    """Sources staged by apply_source in the temp folder `temp` and not deleted."""
    return list(temp.glob("integration-hub-stage-*.parquet"))


@pytest.fixture
def temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp folder of this test's runs alone (tempfile's, as $TMPDIR sets it)."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _second_file_rewrites(landing: Landing, monkeypatch: pytest.MonkeyPatch, during) -> tuple[Any, list, bool]:
    """a, b on the plan free; then a second file (a gold, c pro) that rewrites the table (every source
    of 2+ rows does here), calling `during(catalog, con, rewritten)` once the merged files are written.

    Returns the catalog, the rewrites (`_RewrittenTable`s) and whether the second run succeeded.
    """
    import integration_hub.core.ingest as ingest

    catalog = landing.write_catalog()
    landing.put("crm/1.csv", HEADER + "a@x.com,free,1,yes,2024-01-01,\nb@x.com,free,5,no,2024-01-01,\n")
    assert run_job(catalog, "crm").success
    monkeypatch.setattr(ingest, "REWRITE_MIN_ROWS", 2)
    real_rewrite_table = ingest._rewrite_table
    rewrites: list = []

    def rewrite(con, *args):
        rewritten = real_rewrite_table(con, *args)
        rewrites.append(rewritten)
        during(catalog, con, rewritten)
        return rewritten

    monkeypatch.setattr(ingest, "_rewrite_table", rewrite)
    landing.put("crm/2.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\nc@x.com,pro,1,yes,2024-01-01,\n")
    return catalog, rewrites, run_job(catalog, "crm").success


def test_a_large_source_writes_its_rows_before_its_write_transaction(
    local_landing: Landing, monkeypatch, temp_folder: Path
) -> None:
    waited: list[float] = []

    def another_integration_commits(catalog, con, rewritten) -> None:
        assert all(Path(f).exists() for f in rewritten.files) and not con.execute("SELECT count(*) FROM attributes_crm WHERE plan = 'gold'").fetchone()[0]
        started = time.monotonic()
        with open_writer(catalog) as other, transaction(other):
            other.execute("CREATE TABLE committed_meanwhile AS SELECT 1 AS n")
        waited.append(time.monotonic() - started)

    catalog, rewrites, succeeded = _second_file_rewrites(local_landing, monkeypatch, another_integration_commits)
    assert succeeded
    assert len(rewrites) == 1 and waited[0] < 2.0  # the rewrite held no lock another writer needs
    assert query(catalog, "SELECT user_id, plan FROM attributes_crm ORDER BY 1") == [
        ("a@x.com", "gold"), ("b@x.com", "free"), ("c@x.com", "pro")
    ]
    assert query(catalog, "SELECT n FROM committed_meanwhile") == [(1,)]
    files = {f for f, in query(catalog, "SELECT data_file FROM ducklake_list_files('lake', 'attributes_crm')")}
    assert set(rewrites[0].files) < files  # the source's users' rows; b@x.com stays in the first file's
    # Maintenance knows them as the table's: its orphan cleanup keeps them (and says nothing is amiss).
    maintain_lake(Lake.of(catalog), 30, delete_immediately=True)
    assert query(catalog, "SELECT count(*) FROM attributes_crm") == [(3,)]
    assert not staged_files(temp_folder)


def test_a_rewrite_whose_table_changed_meanwhile_applies_nothing_and_deletes_its_files(
    local_landing: Landing, monkeypatch, temp_folder: Path
) -> None:
    def someone_writes_the_table(catalog, con, rewritten) -> None:  # what integration_lock rules out for runs
        with open_writer(catalog) as other, transaction(other):
            other.execute("INSERT INTO attributes_crm (user_id, plan) VALUES ('z@x.com', 'sneaked in')")

    catalog, rewrites, succeeded = _second_file_rewrites(local_landing, monkeypatch, someone_writes_the_table)
    assert not succeeded
    assert query(catalog, "SELECT user_id, plan FROM attributes_crm ORDER BY 1") == [
        ("a@x.com", "free"), ("b@x.com", "free"), ("z@x.com", "sneaked in")
    ]
    assert rewrites[0].files and not any(Path(f).exists() for f in rewrites[0].files)
    assert "2.csv" in local_landing.keys(), "not applied: the file stays pending"
    assert not staged_files(temp_folder)
