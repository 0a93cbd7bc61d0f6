"""Values written into SQL in place (`sql_value`), and the run path that binds no parameters."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from integration_hub.core.sql import sql_value, sql_values
from integration_hub_tests.support import CRM_INTEGRATION, Landing, query

VALUES = [
    None, True, False, 0, -5, 2**62, -(2**63), 2**70, 1.5, -0.0, 1e-300, 0.1 + 0.2, float("inf"), float("-inf"),
    "", "it's", "o''k", "a\x00b\x00", "line\nbreak", "ünï 😀", "\\n stays", "-- not a comment", "'; DROP TABLE x; --",
    datetime(2024, 5, 1, 13, 45, 1, 123456, tzinfo=timezone.utc),
    datetime(2024, 5, 1, 13, 45, tzinfo=timezone(timedelta(hours=2))),
    datetime(2024, 5, 1, 13, 45),
    date(2024, 2, 29),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_value_written_in_place_reads_back_as_it_was(value: object) -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    got = con.execute(f"SELECT {sql_value(value)}").fetchone()[0]
    assert got == value and type(got) is type(value)


def test_nan_and_a_row_of_values_read_back() -> None:
    con = duckdb.connect()
    assert math.isnan(con.execute(f"SELECT {sql_value(float('nan'))}").fetchone()[0])
    assert con.execute(f"SELECT * FROM (VALUES {sql_values(['a', 1, None])})").fetchall() == [("a", 1, None)]
    with pytest.raises(TypeError, match="no SQL literal for a list"):
        sql_value([1])


def test_a_csv_run_binds_no_parameter_so_it_never_imports_pandas(local_landing: Landing, tmp_path: Path) -> None:
    """Binding a parameter makes DuckDB's Python client import pandas: 0.5 s and 40 MB of every run.

    Two `integration-hub run`s, each in a process of its own: one file applied by MERGE, then one
    by rewrite with a rejected row and a duplicate; each recorded, moved, checked and summarised.
    """
    header = "email,Plan Tier,tickets,is_active,signup,last_login\n"
    catalog = local_landing.write_catalog({**CRM_INTEGRATION, "max_rejected_ratio": 0.75})
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home")}

    def run(rewrite: bool) -> None:
        probe = (
            "import sys\n"
            "import integration_hub.core.ingest as ingest\n"
            "from integration_hub.cli.main import main\n"
            f"ingest.REWRITE_MIN_ROWS = {2 if rewrite else 10**9}\n"
            "code = main(['--catalog', sys.argv[1], 'run', 'crm'])\n"
            "print(f'exit {code} pandas {\"pandas\" in sys.modules}')\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", probe, str(local_landing.catalog_path)], capture_output=True, text=True, env=env,
            timeout=300,
        )
        assert done.stdout.strip().splitlines()[-1:] == ["exit 0 pandas False"], (done.stdout + done.stderr)[-3000:]

    local_landing.put("crm/1.csv", header + "a@x.com,free,1,yes,2024-01-01,\nd@x.com,free,1,yes,,\n")
    run(rewrite=False)
    local_landing.put(
        "crm/2.csv",
        header + "a@x.com,gold,2,yes,2024-01-01,\nb@x.com,it's,3,no,,\nc@x.com,free,many,yes,,\n"
        "d@x.com,free,1,yes,,\nd@x.com,pro,1,yes,,\n",
    )
    run(rewrite=True)
    assert query(catalog, "SELECT user_id, plan FROM attributes_crm ORDER BY 1") == [
        ("a@x.com", "gold"), ("b@x.com", "it's"), ("d@x.com", "free")
    ]
    assert query(catalog, "SELECT key, moved_to FROM processed_files ORDER BY processed_at") == [
        ("crm/1.csv", "crm/success/1.csv"), ("crm/2.csv", "crm/success/2.csv")
    ]
    assert query(catalog, "SELECT row_number, value FROM rejected_rows ORDER BY row_number") == [
        (4, "many"), (5, "d@x.com"), (6, "d@x.com")
    ]
