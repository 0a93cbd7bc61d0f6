"""`integration-hub migrate`: bring a pre-lake warehouse file into the lake."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from ..core.migrate import migrate_into
from .management import catalog_from
from .output import print_json


def cmd_migrate(args: argparse.Namespace) -> int:
    catalog = catalog_from(args)
    old = Path(args.old).expanduser().resolve()
    # A MigrationError or LakeError is a WarehouseError: main prints its one line.
    copies = migrate_into(catalog, old, progress=None if args.json else print)
    if args.json:
        print_json([asdict(copy) for copy in copies])
        return 0
    rows = sum(c.rows for c in copies)
    print(
        f"migrated {len(copies)} tables ({rows:,} rows) into the lake {catalog.warehouse_shown}; "
        f"{old} was not changed: keep it until you trust the lake"
    )
    return 0
