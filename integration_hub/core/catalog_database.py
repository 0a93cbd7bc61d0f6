"""State kept beside the lake in a PostgreSQL catalog database (scale-out): schema `integration_hub`.

The API's tokens and the Salesforce credentials live here when the warehouse catalog is
PostgreSQL, so that every machine sees them. DuckLake's own tables are in the default schema.
"""

from __future__ import annotations

from typing import Any

from .warehouse import postgres_connect

SCHEMA = "integration_hub"


def connect_hub_schema(dsn: str, shown: str, purpose: str, ddl: str) -> Any:
    """An autocommit psycopg2 connection whose search_path is the hub's schema, with `ddl` applied.

    The schema and tables are made by whichever process comes first, under an advisory lock:
    concurrent CREATE ... IF NOT EXISTS race otherwise. Raises LakeError when unreachable.
    """
    con = postgres_connect(dsn, shown, purpose)
    con.autocommit = True
    with con.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('integration_hub'), hashtext('schema'))")
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        cursor.execute(f"SET search_path TO {SCHEMA}")  # kept after COMMIT: not SET LOCAL
        cursor.execute(ddl)
        cursor.execute("COMMIT")
    return con
