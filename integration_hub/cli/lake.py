"""Analyst commands over the lake: `sql` (one read-only query, or how to open the lake) and `history`."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb

from ..core.catalog import Catalog
from ..core.history import attribute_history
from ..core.sql import literal
from ..core.warehouse import Lake, open_reader, without_password
from .management import catalog_from, find_integration
from .output import CommandError, print_json, print_table

# What a query may be: reading statements only (the lake is attached read-only as well).
READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
TABLE_ROWS = 1000  # a terminal table shows at most this many rows; --csv/--json stream them all
FETCH_ROWS = 10_000


def _shown(path: Path) -> str:
    """A path as the user would type it from here: relative when under the working folder."""
    try:
        return os.path.relpath(path.resolve()) if path.resolve().is_relative_to(Path.cwd()) else str(path.resolve())
    except ValueError:
        return str(path.resolve())


def attach_statements(lake: Lake) -> list[str]:
    """SQL that opens the lake read-only from the DuckDB CLI, Python, a notebook or a BI tool.

    No secret is printed: a PostgreSQL catalog's password comes from PGPASSWORD (or ~/.pgpass),
    S3 keys from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, both read by DuckDB itself.
    """
    if lake.catalog_path is not None:
        lake = replace(lake, catalog_path=Path(_shown(lake.catalog_path)))
    extensions = ["ducklake", "postgres" if lake.on_postgres else "sqlite"] + (["httpfs"] if lake.s3 else [])
    statements: list[str] = []
    if lake.on_postgres or lake.s3:
        needs = (["PGPASSWORD (or ~/.pgpass) for the catalog's password"] if lake.on_postgres else []) + (
            ["AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the data's keys"] if lake.s3 else []
        )
        statements.append(f"-- set {' and '.join(needs)} in the environment first")
    statements += [f"INSTALL {name};" for name in extensions] + [f"LOAD {name};" for name in extensions]
    if lake.s3 is not None:
        settings = {"s3_region": lake.s3.region, "s3_endpoint": lake.s3.endpoint}
        statements += [f"SET {name} = {literal(value)};" for name, value in settings.items() if value]
        if lake.s3.endpoint:
            statements += ["SET s3_url_style = 'path';", f"SET s3_use_ssl = {'true' if lake.s3.use_ssl else 'false'};"]
    public = replace(lake, postgres_dsn=without_password(lake.postgres_dsn)) if lake.on_postgres else lake
    statements += [
        public.attach_sql(read_only=True, with_data_path=False) + ";",  # the catalog knows its data path
        "USE lake;",
    ]
    return statements


def _one_query(con: duckdb.DuckDBPyConnection, query: str) -> duckdb.Statement:
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise CommandError(f"the query does not parse: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise CommandError(f"give exactly one query (got {len(statements)} statements)")
    statement = statements[0]
    if statement.type not in READ_STATEMENTS:
        raise CommandError(
            f"only queries run here (got a {statement.type.name} statement): the lake is read-only for "
            "analysts; data changes through integrations"
        )
    return statement


def _sandbox(con: duckdb.DuckDBPyConnection, lake: Lake) -> None:
    # The query may read the lake's files and nothing else on this machine.
    con.execute(f"SET allowed_directories = [{literal(lake.data_url)}]")
    con.execute("SET enable_external_access = false")


def cmd_sql(args: argparse.Namespace) -> int:
    catalog = catalog_from(args)
    lake = Lake.of(catalog)
    if args.attach:
        statements = attach_statements(lake)
        if args.json:
            print_json({"statements": statements})
        else:
            print("\n".join(statements))
        return 0
    if not args.query:
        raise CommandError('give a query, e.g. integration-hub sql "SELECT count(*) FROM user_profiles", or --attach')
    with open_reader(catalog, private=True) as con:  # _sandbox changes settings of the whole DuckDB
        if con is None:
            raise CommandError(f"the warehouse {catalog.warehouse_shown} does not exist yet: run an integration first")
        statement = _one_query(con, args.query)
        _sandbox(con, lake)
        try:
            result = con.execute(statement.query)
        except duckdb.Error as exc:
            raise CommandError(f"the query failed: {str(exc).splitlines()[0]}") from None
        columns = [d[0] for d in result.description]
        if args.csv:
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(columns)
            while rows := result.fetchmany(FETCH_ROWS):
                writer.writerows([_csv_cell(v) for v in row] for row in rows)
            return 0
        if args.json:
            print_json(_all_rows(result, columns))
            return 0
        rows = result.fetchmany(TABLE_ROWS + 1)
        print_table([dict(zip(columns, r, strict=True)) for r in rows[:TABLE_ROWS]], [(c, c) for c in columns])
        if len(rows) > TABLE_ROWS:
            print(f"(the first {TABLE_ROWS} rows; --csv or --json gives all of them)")
    return 0


def _csv_cell(value: Any) -> Any:
    """A value as DuckDB's own CSV writer (and the file exports) spells it: NULL empty, booleans lowercase."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _all_rows(result: duckdb.DuckDBPyConnection, columns: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while batch := result.fetchmany(FETCH_ROWS):
        rows += [dict(zip(columns, r, strict=True)) for r in batch]
    return rows


def cmd_history(args: argparse.Namespace) -> int:
    catalog: Catalog = catalog_from(args)
    integration = find_integration(catalog, args.integration) if args.integration else None
    if integration is not None and integration not in catalog.inbound:
        raise CommandError(f"{integration.name} is not an inbound integration: only inbound attributes have a history")
    with open_reader(catalog) as con:
        if con is None:
            raise CommandError(f"the warehouse {catalog.warehouse_shown} does not exist yet: run an integration first")
        changes = attribute_history(con, catalog, args.user_id, integration)  # type: ignore[arg-type]
    if args.json:
        print_json([c.as_dict() for c in changes])
        return 0
    if not changes:
        print(f"no attribute values for user {args.user_id!r} in the retained snapshots "
              f"({catalog.warehouse.snapshot_retention_days} days)")
        return 0
    print_table(
        [c.as_dict() for c in changes],
        [("integration", "INTEGRATION"), ("attribute", "ATTRIBUTE"), ("value", "VALUE"),
         ("changed_at", "CHANGED (UTC)"), ("source", "SOURCE")],
    )
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "sql",
        help="Run one read-only query against the lake, or print how to open it elsewhere (--attach).",
        description="Run one read-only query against the lake and print the result; it reads the last "
        "committed snapshot and never waits for, or delays, a run. --attach prints the SQL that opens the "
        "same lake from the DuckDB CLI, Python, a notebook or a BI tool.",
        parents=[common],
    )
    p.add_argument("query", nargs="?", help='one query, e.g. "SELECT * FROM user_profiles LIMIT 5"')
    form = p.add_mutually_exclusive_group()
    form.add_argument("--csv", action="store_true", help="print CSV (every row)")
    form.add_argument("--json", action="store_true", help="print JSON for scripts (every row)")
    p.add_argument("--attach", action="store_true", help="print the statements that open the lake read-only")
    p.set_defaults(func_path="integration_hub.cli.lake:cmd_sql")
    p = sub.add_parser(
        "history",
        help="Each attribute's values over time for one user, with when and which source set them.",
        description="Each attribute's values for one user over the retained snapshots "
        "(warehouse.snapshot_retention_days): the value, when it changed (UTC) and the file or API batch "
        "that set it.",
        parents=[common],
    )
    p.add_argument("user_id", help="the user's id, as in attributes_<integration>.user_id")
    p.add_argument("--integration", metavar="NAME", help="only this inbound integration")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func_path="integration_hub.cli.lake:cmd_history")
