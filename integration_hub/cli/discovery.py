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

from ..core.catalog import S3Connection
from ..core.landing import LandingFile, is_pending_name, landing_store
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


def _find_file(store, path: str) -> LandingFile:
    folder, name = posixpath.split(path.strip("/"))
    if is_pending_name(name):
        listing = store.list_pending(folder)
        match = [f for f in listing if f.name == name]
        if match:
            return match[0]
        for sub in ("success", "failed"):
            listing = store.list_pending(posixpath.join(folder, sub))
            match = [f for f in listing if f.name == name]
            if match:
                return match[0]
        raise CommandError(f"no file {path!r} found; give a file key like crm/users.csv or a folder like crm")
    listing = store.list_pending(path.strip("/"))
    if not listing:
        raise CommandError(f"no CSV files in {store.url(path.strip('/'))}/; drop a sample file there first")
    return listing[-1]  # the newest


def discover(catalog, connection_name: str, path: str) -> dict[str, Any]:
    try:
        connection = catalog.connection(connection_name)
    except KeyError:
        known = ", ".join(c.name for c in catalog.connections) or "none"
        raise CommandError(f"no connection named {connection_name!r} (known: {known})") from None
    store = landing_store(catalog, connection)
    file = _find_file(store, path)
    with tempfile.TemporaryDirectory(prefix="integration-hub-discover-") as tmp:
        sample = sample_of(store, file, Path(tmp), DISCOVERY_BYTES)
        con = duckdb.connect()
        try:
            relation = f"read_csv({literal(str(sample))}, header = true, null_padding = true)"
            described = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
            rows = con.execute(f"SELECT count(*) FROM {relation}").fetchone()[0]
            columns = []
            for name, duck_type, *_ in described:
                stats = con.execute(
                    f"SELECT count(DISTINCT {ident(name)}), count({ident(name)}), "
                    f"list(DISTINCT CAST({ident(name)} AS VARCHAR))[1:3] FROM {relation}"
                ).fetchone()
                columns.append(
                    {
                        "column": name,
                        "duckdb_type": duck_type,
                        "type": property_type(duck_type),
                        "distinct": stats[0],
                        "non_blank": stats[1],
                        "samples": [s for s in stats[2] if s is not None],
                    }
                )
        except duckdb.Error as exc:
            raise CommandError(f"cannot read {file.key} as CSV: {str(exc).splitlines()[0]}") from None
        finally:
            con.close()
    candidates = [c for c in columns if _ID_HINT.search(c["column"]) and c["distinct"] == rows and rows]
    candidates.sort(key=lambda c: ("mail" not in c["column"].lower(), c["column"]))
    user_id = (candidates or [c for c in columns if c["distinct"] == rows] or columns)[0]["column"]
    folder = posixpath.dirname(file.key.strip("/"))
    if isinstance(connection, S3Connection) and connection.prefix and folder.startswith(connection.prefix):
        folder = folder[len(connection.prefix) :].strip("/")
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
    return {
        "file": store.url(file.key),
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
    print(f"file: {found['file']} ({found['rows_sampled']} rows sampled)")
    width = max(len(c["column"]) for c in found["columns"])
    for column in found["columns"]:
        mark = "  <- user id" if column["column"] == found["user_id_column"] else ""
        samples = ", ".join(repr(s) for s in column["samples"])
        print(f"  {column['column'].ljust(width)}  {column['type']:<8}  {samples}{mark}")
    print("\nA ready catalog entry (review names and types):\n")
    print(found["yaml"])
    return 0
