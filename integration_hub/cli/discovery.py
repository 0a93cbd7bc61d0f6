"""Data discovery: columns, inferred types and sample values of a landed file, and a YAML snippet."""

from __future__ import annotations

import argparse
import posixpath
import re
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import yaml

from ..core.catalog import Catalog, Connection, CsvIntegration
from ..core.landing import LandingFile, LandingStore, is_pending_name, landing_store
from ..core.sql import ident, literal
from ..inbound_csv.check import sample_of
from .management import catalog_from
from .output import CommandError, print_json

DISCOVERY_BYTES = 8 * 1024 * 1024
_ID_HINT = re.compile(r"(^|_|\b)(e-?mail|user_?id|userid|uid|id|guid|external_?id)($|_|\b)", re.IGNORECASE)


def property_type(duckdb_type: str) -> str:
    upper = duckdb_type.upper()
    if upper in ("BOOLEAN",):
        return "boolean"
    if upper.startswith(("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "DOUBLE", "FLOAT", "DECIMAL", "UBIGINT", "UINTEGER")):
        return "number"
    if upper == "DATE":
        return "date"
    if upper.startswith("TIMESTAMP"):
        return "datetime"
    return "string"


def attribute_name(column: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", column.strip().lower()).strip("_") or "column"
    return name if name[0].isalpha() else f"c_{name}"


PROCESSED = ("success", "failed")  # where runs move files; discovery falls back to them in this order


def _find_file(store: LandingStore, path: str) -> tuple[LandingFile, bool]:
    """The file to sample, and whether it is a fallback: the newest processed file of an empty folder."""
    folder, name = posixpath.split(path.strip("/"))
    if is_pending_name(name):
        for where in (folder, *(posixpath.join(folder, sub) for sub in PROCESSED)):
            match = [f for f in store.list_pending(where) if f.name == name]
            if match:
                return match[0], False
        raise CommandError(f"no file {path!r} found; give a file key like crm/users.csv or a folder like crm")
    folder = path.strip("/")
    listing = store.list_pending(folder)
    if listing:
        return listing[-1], False  # the newest
    for sub in PROCESSED:
        processed = store.list_pending(posixpath.join(folder, sub))
        if processed:
            return processed[-1], True
    raise CommandError(
        f"no CSV files in {store.url(folder)}/ (nor in its success/ or failed/); drop a sample file there first"
    )


def _note(catalog: Catalog, store: LandingStore, connection: Connection, file: LandingFile, folder: str,
          fallback: bool) -> str | None:
    """Say when the sample is a processed file, and which folder an integration reads."""
    processed_in = posixpath.basename(posixpath.dirname(file.key))
    if processed_in not in PROCESSED:
        return None
    where = store.url(posixpath.dirname(posixpath.dirname(file.key)))
    said = (
        f"no pending CSV files in {where}/, so this is the newest processed file (in {processed_in}/)"
        if fallback
        else f"{file.name} was processed already (it is in {processed_in}/)"
    )
    readers = [
        i.name for i in catalog.integrations
        if isinstance(i, CsvIntegration) and i.connection == connection.name and i.folder.strip("/") == folder
    ]
    reader = f" (integration {', '.join(readers)} reads it)" if readers else ""
    return f"{said}; the integration's folder is {folder!r}{reader}: new files go there, not into {processed_in}/"


def integration_folder(key: str) -> str:
    """The folder an integration would read: processed files live in <folder>/success|failed/."""
    folder = posixpath.dirname(key.strip("/"))
    if posixpath.basename(folder) in PROCESSED:
        folder = posixpath.dirname(folder)
    return folder


def discover(catalog, connection_name: str, path: str) -> dict[str, Any]:
    try:
        connection = catalog.connection(connection_name)
    except KeyError:
        known = ", ".join(c.name for c in catalog.connections) or "none"
        raise CommandError(f"no connection named {connection_name!r} (known: {known})") from None
    store = landing_store(catalog, connection)
    file, fallback = _find_file(store, path)
    with tempfile.TemporaryDirectory(prefix="integration-hub-discover-") as tmp:
        sample = sample_of(store, file, Path(tmp), DISCOVERY_BYTES)
        con = duckdb.connect()
        try:
            typed = f"read_csv({literal(str(sample))}, header = true, null_padding = true)"
            # Samples as the file has them ('yes', '007', '1.50'), beside the type inferred from the typed read.
            text = f"read_csv({literal(str(sample))}, header = true, null_padding = true, all_varchar = true)"
            described = con.execute(f"DESCRIBE SELECT * FROM {typed}").fetchall()
            rows = con.execute(f"SELECT count(*) FROM {text}").fetchone()[0]
            columns = []
            for name, duck_type, *_ in described:
                column = ident(name)
                # In the order the file has them: the first three distinct values.
                stats = con.execute(
                    f"WITH t AS (SELECT {column} AS v, row_number() OVER () AS n FROM {text}) "
                    "SELECT (SELECT count(DISTINCT v) FROM t), (SELECT count(v) FROM t), "
                    "(SELECT list(v ORDER BY n)[1:3] FROM "
                    "(SELECT v, min(n) AS n FROM t WHERE v IS NOT NULL GROUP BY v))"
                ).fetchone()
                columns.append(
                    {
                        "column": name,
                        "duckdb_type": duck_type,
                        "type": property_type(duck_type),
                        "distinct": stats[0],
                        "non_blank": stats[1],
                        "samples": list(stats[2] or []),
                    }
                )
        except duckdb.Error as exc:
            raise CommandError(f"cannot read {store.url(file.key)} as CSV: {str(exc).splitlines()[0]}") from None
        finally:
            con.close()
    candidates = [c for c in columns if _ID_HINT.search(c["column"]) and c["distinct"] == rows and rows]
    candidates.sort(key=lambda c: ("mail" not in c["column"].lower(), c["column"]))
    user_id = (candidates or [c for c in columns if c["distinct"] == rows] or columns)[0]["column"]
    folder = integration_folder(file.key)  # keys are relative to the connection's prefix already
    snippet = {
        "name": attribute_name(posixpath.basename(folder) or "new_integration"),
        "type": "s3_csv",
        "connection": connection.name,
        "folder": folder or "CHOOSE_A_FOLDER",
        "user_id_column": user_id,
        "properties": [
            {"column": c["column"], "name": attribute_name(c["column"]), "type": c["type"]}
            for c in columns
            if c["column"] != user_id
        ],
        "schedule": "*/15 * * * *",
    }
    note = _note(catalog, store, connection, file, folder, fallback)
    return {
        "file": store.url(file.key),
        "note": note,
        "rows_sampled": rows,
        "user_id_column": user_id,
        "columns": columns,
        "yaml": yaml.safe_dump({"integrations": [snippet]}, sort_keys=False, allow_unicode=True),
    }


def cmd_discover(args: argparse.Namespace) -> int:
    found = discover(catalog_from(args), args.connection, args.path)
    if args.json:
        print_json(found)
        return 0
    if found["note"]:
        print(f"note: {found['note']}")
    print(f"file: {found['file']} ({found['rows_sampled']} rows sampled)")
    width = max(len(c["column"]) for c in found["columns"])
    for column in found["columns"]:
        mark = "  <- user id" if column["column"] == found["user_id_column"] else ""
        samples = ", ".join(column["samples"])
        print(f"  {column['column'].ljust(width)}  {column['type']:<8}  {samples}{mark}")
    print("\nA ready catalog entry (review names and types):\n")
    print(found["yaml"])
    return 0
