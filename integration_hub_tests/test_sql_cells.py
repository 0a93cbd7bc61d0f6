"""A cell's text as staging reads it (`trimmed_cell`): exactly DuckDB's trim, blank as NULL."""

from __future__ import annotations

import duckdb

from integration_hub.core.sql import trimmed_cell


def test_a_trimmed_cell_is_duckdbs_trim_for_every_character_at_either_end() -> None:
    """Every Unicode character alone, at the start, at the end, and inside non-ASCII text: the fast
    path for ASCII cells must never keep a space that trim() removes, nor remove anything else."""
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE chars AS SELECT chr(i::INTEGER) AS c FROM range(1, 1114112) r(i) WHERE i < 55296 OR i > 57343"
    )
    con.execute(
        "CREATE TABLE cells AS "
        "SELECT unnest([c, c || 'a', 'a' || c, 'ü' || c || 'ü']) AS s FROM chars "
        "UNION ALL SELECT unnest(['', ' ', '   ', 'a', ' a ', 'ü', NULL, chr(12288) || 'x' || chr(160)])"
    )
    checked, different = con.execute(
        f"SELECT count(*), count(*) FILTER ({trimmed_cell('s')} IS DISTINCT FROM NULLIF(trim(s), '')) FROM cells"
    ).fetchone()
    examples = con.execute(
        f"SELECT s, {trimmed_cell('s')}, NULLIF(trim(s), '') FROM cells "
        f"WHERE {trimmed_cell('s')} IS DISTINCT FROM NULLIF(trim(s), '') LIMIT 5"
    ).fetchall()
    assert checked > 4_000_000
    assert different == 0, examples
