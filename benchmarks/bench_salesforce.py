"""Salesforce sync benchmark: a 100,000-row report into the fake Salesforce org over real HTTPS.

    .venv/bin/python benchmarks/bench_salesforce.py               # 100,000 rows (about a minute)
    .venv/bin/python benchmarks/bench_salesforce.py --rows 5000   # smoke run
    .venv/bin/python benchmarks/bench_salesforce.py --bulk-delay 20   # Bulk jobs take 20 s, as in a real org

Builds a warehouse whose attribute table holds `--rows` users, a fake org (the test suite's
`FakeSalesforce`, HTTPS on loopback) with one Contact per user, and a catalog syncing the
report (email + 5 mapped WalkMe_...__c fields of every type) into Contact. Then runs the
integration's Dagster job, exactly as `integration-hub run` does, three times:

  first      every row is new: Bulk API 2.0 query to match, one Bulk API 2.0 update job
  unchanged  nothing changed: the diff sends nothing (target: zero update calls)
  1% change  1% of the rows changed: looked up with SOQL, sent with sObject Collections

and prints wall time and the API calls the fake server saw, by kind, for each run.
Targets (issue 4): first run <= 60 s and <= 40 API calls; unchanged run: 0 update calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from common import fmt_seconds, lake_settings, print_table, target_line  # noqa: E402 - after the path tweak

MAX_FIRST_SECONDS = 60.0
MAX_FIRST_CALLS = 40
UPDATE_KINDS = ("composite_update", "update_single", "bulk_ingest_create", "bulk_ingest_upload", "bulk_ingest_close")
NAME = "bench_to_salesforce"


def _catalog(root: Path, fake: Any) -> Any:
    import yaml

    from integration_hub.core.catalog import load_catalog

    (root / "landing").mkdir(exist_ok=True)
    document = {
        "warehouse": lake_settings(root),
        "connections": [
            {"name": "landing", "type": "local", "path": str(root / "landing")},
            {"name": "sf", "type": "salesforce", "environment": "sandbox", "login_url": fake.url,
             "client_id": "bench-app", "ca_bundle": fake.ca_file, "timeout_seconds": 120},
        ],
        "integrations": [
            {"name": "people", "type": "s3_csv", "connection": "landing", "folder": "people",
             "user_id_column": "email", "properties": [
                 {"column": "pct", "name": "onboarding_pct", "type": "number"},
                 {"column": "nps", "name": "nps", "type": "number"},
                 {"column": "risk", "name": "churn_risk", "type": "string"},
                 {"column": "active", "name": "active", "type": "boolean"},
                 {"column": "seen", "name": "last_seen", "type": "date"}]},
            {"name": NAME, "type": "salesforce", "connection": "sf", "report": "onboarding", "object": "Contact",
             "report_key": "email", "salesforce_key": "Email", "fields": [
                 {"column": "onboarding_pct", "field": "WalkMe_Onboarding_Pct__c"},
                 {"column": "nps", "field": "WalkMe_NPS__c"},
                 {"column": "churn_risk", "field": "WalkMe_Churn_Risk__c"},
                 {"column": "active", "field": "WalkMe_Active__c"},
                 {"column": "last_seen", "field": "WalkMe_Last_Seen__c"}]},
        ],
        "reports": [{"name": "onboarding", "sql": "SELECT user_id AS email, onboarding_pct, nps, churn_risk, active, "
                                                  "last_seen FROM user_profiles"}],
    }
    path = root / "integrations.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_catalog(path)


def _seed(catalog: Any, rows: int, changed_every: int = 0) -> None:
    """The attribute table: `rows` users; with `changed_every`, every n-th user gets a new NPS."""
    from integration_hub.core.warehouse import ensure_schema, open_writer, transaction

    nps = f"CASE WHEN i % {changed_every} = 0 THEN 11 - i % 11 ELSE i % 11 END" if changed_every else "i % 11"
    with open_writer(catalog) as con:
        ensure_schema(con, catalog)
        with transaction(con):
            con.execute("DELETE FROM attributes_people")
            con.execute(
                f"""
                INSERT INTO attributes_people
                SELECT 'user' || lpad(CAST(i AS VARCHAR), 7, '0') || '@example.com',
                       round((i % 1000) / 10.0, 1), {nps},
                       ['Low', 'Medium', 'High'][1 + i % 3], i % 2 = 0, DATE '2024-01-01' + CAST(i % 365 AS INTEGER),
                       TIMESTAMPTZ '2024-06-01 00:00:00+00', 'bench'
                  FROM range({int(rows)}) AS t(i)
                """
            )


def _run(catalog: Any, fake: Any) -> dict[str, Any]:
    import dagster as dg

    from integration_hub.core.warehouse import open_reader
    from integration_hub.definitions import build_definitions

    fake.reset_calls()
    job = build_definitions(catalog).resolve_job_def(f"{NAME}_job")
    started = time.perf_counter()
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False,
                                        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
    seconds = time.perf_counter() - started
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        raise SystemExit(f"the run failed: {failure.step_failure_data.error.message if failure else 'see above'}")
    with open_reader(catalog) as con:
        names = ["runtime_seconds", "rows", "updated", "unchanged", "unmatched", "failed", "transport"]
        values = con.execute(f"SELECT {', '.join(names)} FROM salesforce_sync_runs ORDER BY started_at DESC LIMIT 1").fetchone()
    calls = fake.calls_by_kind()
    return {"seconds": seconds, "calls": calls, "total_calls": sum(calls.values()),
            "update_calls": sum(calls.get(k, 0) for k in UPDATE_KINDS), **dict(zip(names, values, strict=True))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="report rows = Contacts (default 100,000)")
    parser.add_argument("--bulk-delay", type=float, default=0.0,
                        help="seconds the fake takes to process a Bulk API 2.0 job (default 0: at once), "
                             "to see the status polling a real org causes")
    args, _ = parser.parse_known_args(argv)  # run_all.py passes every benchmark the same arguments

    from cryptography.fernet import Fernet

    from integration_hub.salesforce.auth import token_store
    from integration_hub_tests.fakes.salesforce import FakeSalesforce
    from integration_hub_tests.test_salesforce_support import add_contact_object

    os.environ["INTEGRATION_HUB_SECRET_KEY"] = Fernet.generate_key().decode()
    for name in ("INTEGRATION_HUB_CATALOG", "INTEGRATION_HUB_WAREHOUSE"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="bench-salesforce-") as tmp, FakeSalesforce(bulk_processing_delay=args.bulk_delay) as fake:
        os.environ["DAGSTER_HOME"] = tmp
        root = Path(tmp)
        add_contact_object(fake)
        started = time.perf_counter()
        fake.insert("Contact", ({"LastName": f"User {i}", "Email": f"user{i:07d}@example.com"}
                                for i in range(args.rows)))
        catalog = _catalog(root, fake)
        token_store(catalog).save("sf", {"refresh_token": fake.issue_refresh_token(client_id="bench-app"),
                                         "instance_url": fake.url, "client_id": "bench-app"})
        _seed(catalog, args.rows)
        print(f"setup: {args.rows:,} Contacts in the fake org and {args.rows:,} users in the warehouse "
              f"({time.perf_counter() - started:.1f} s)", flush=True)

        first = _run(catalog, fake)
        second = _run(catalog, fake)
        _seed(catalog, args.rows, changed_every=100)
        third = _run(catalog, fake)
        assert not fake.server_errors, fake.server_errors

    runs = [("first", first), ("unchanged", second), ("1% changed", third)]
    print_table(
        ["run", "wall s", "sync s", "rows", "updated", "unchanged", "failed", "transport", "API calls", "update calls"],
        [[label, fmt_seconds(r["seconds"]), fmt_seconds(r["runtime_seconds"]), f"{r['rows']:,}", f"{r['updated']:,}",
          f"{r['unchanged']:,}", r["failed"], r["transport"], r["total_calls"], r["update_calls"]] for label, r in runs],
        title=f"Salesforce sync of a {args.rows:,}-row report (Dagster job: report + sync; fake org over HTTPS"
              + (f"; Bulk jobs take {args.bulk_delay:g} s)" if args.bulk_delay else ")"),
    )
    kinds = sorted({k for _, r in runs for k in r["calls"]})
    print_table(["API calls by kind", *(label for label, _ in runs)],
                [[kind, *(r["calls"].get(kind, 0) for _, r in runs)] for kind in kinds])
    print()
    checks = [
        (f"first run wall time <= {MAX_FIRST_SECONDS:.0f} s", f"{first['seconds']:.1f} s",
         first["seconds"] <= MAX_FIRST_SECONDS),
        (f"first run API calls <= {MAX_FIRST_CALLS}", str(first["total_calls"]), first["total_calls"] <= MAX_FIRST_CALLS),
        ("first run used Bulk API 2.0", first["transport"], "bulk" in first["transport"]),
        ("first run updated every row", f"{first['updated']:,}", first["updated"] == args.rows),
        ("unchanged run makes 0 update calls", str(second["update_calls"]), second["update_calls"] == 0),
        ("unchanged run sent nothing", f"{second['unchanged']:,} unchanged", second["unchanged"] == args.rows),
    ]
    for description, actual, ok in checks:
        print(target_line(description, actual, ok))
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
