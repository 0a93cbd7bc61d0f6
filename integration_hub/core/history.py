"""Attribute history: each attribute's values for one user over the lake's retained snapshots.

Every apply writes a user's changed row as a new row version (MERGE as an update, a large
source's rewrite as an insert), and DuckLake keeps those versions for the retained snapshots.
The history is the row as of the oldest retained snapshot plus every version written since
(`ducklake_table_insertions`), read for one user only; a value is listed when it differs from the one
before, with the snapshot's time and the row's `_source` (the file or API batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from .catalog import Catalog, InboundIntegration
from .sql import ident, literal
from .warehouse import LAKE, attributes_table, table_names

SYSTEM_COLUMNS = ("user_id", "_updated_at", "_source")


@dataclass(frozen=True)
class AttributeChange:
    """One value an attribute took: when the lake committed it, and which source set it."""

    integration: str
    attribute: str
    value: Any
    changed_at: datetime
    source: str | None
    snapshot_id: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "integration": self.integration,
            "attribute": self.attribute,
            "value": self.value,
            "changed_at": self.changed_at,
            "source": self.source,
            "snapshot_id": self.snapshot_id,
        }


def _table_begin_snapshot(con: duckdb.DuckDBPyConnection, table: str) -> int | None:
    # The metadata catalog is DuckLake's own, attached as __ducklake_metadata_<name>: the only
    # place that says since which snapshot a table exists (no function reports it).
    row = con.execute(
        f"SELECT begin_snapshot FROM {ident('__ducklake_metadata_' + LAKE)}.ducklake_table "
        # A literal, not a parameter: binding one imports pandas in DuckDB's Python client (half a second).
        f"WHERE table_name = {literal(table)} AND end_snapshot IS NULL"
    ).fetchone()
    return int(row[0]) if row else None


def _versions(con: duckdb.DuckDBPyConnection, table: str, user_id: str) -> list[tuple[int, dict[str, Any]]]:
    """(snapshot id, row) for each version of the user's row, oldest first."""
    begin = _table_begin_snapshot(con, table)
    if begin is None:
        return []
    oldest, current = con.execute(f"SELECT min(snapshot_id), max(snapshot_id) FROM {LAKE}.snapshots()").fetchone()
    start = max(begin, int(oldest))
    columns = [d[0] for d in con.execute(f"DESCRIBE {ident(table)}").fetchall()]
    select = ", ".join(ident(c) for c in columns)
    uid = literal(user_id)
    parts = []
    if start > begin:  # versions before the oldest retained snapshot: only its state is left
        parts.append(
            f"SELECT {int(start)} AS snapshot_id, -1 AS rowid, {select} FROM {ident(table)} "
            f"AT (VERSION => {int(start)}) WHERE user_id = {uid}"
        )
        start += 1
    if start <= current:
        parts.append(
            # Insertions, not table_changes: every version is an insert (an update is a delete plus an
            # insert), and table_changes also reads every deleted row to pair pre- and postimages.
            f"SELECT snapshot_id, rowid, {select} FROM ducklake_table_insertions({literal(LAKE)}, 'main', "
            f"{literal(table)}, {int(start)}, {int(current)}) WHERE user_id = {uid}"
        )
    if not parts:
        return []
    rows = con.execute(f"SELECT * FROM ({' UNION ALL '.join(parts)}) ORDER BY snapshot_id, rowid").fetchall()
    return [(row[0], dict(zip(columns, row[2:], strict=True))) for row in rows]


def attribute_history(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, user_id: str, integration: InboundIntegration | None = None
) -> list[AttributeChange]:
    """Each attribute's values for `user_id` over time, oldest first per attribute."""
    existing = table_names(con)
    times = dict(con.execute(f"SELECT snapshot_id, snapshot_time FROM {LAKE}.snapshots()").fetchall())
    changes: list[AttributeChange] = []
    for entry in [integration] if integration else catalog.inbound:
        table = attributes_table(entry.name)
        if table not in existing:
            continue
        previous: dict[str, Any] = {}
        for snapshot_id, row in _versions(con, table, user_id):
            for attribute, value in row.items():
                if attribute in SYSTEM_COLUMNS:
                    continue
                if attribute in previous and previous[attribute] == value:
                    continue  # the row was written again (another attribute, or a rewrite): no change here
                if attribute not in previous and value is None:
                    previous[attribute] = None
                    continue  # never set yet
                previous[attribute] = value
                changes.append(
                    AttributeChange(entry.name, attribute, value, times[snapshot_id], row.get("_source"), snapshot_id)
                )
    changes.sort(key=lambda c: (c.integration, c.attribute, c.snapshot_id))
    return changes
