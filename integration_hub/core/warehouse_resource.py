"""The warehouse as a Dagster resource: what every integration's run opens the lake through.

Kept apart from `warehouse` so that commands that only read the lake (`sql`, `history`, ...)
start without importing Dagster.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import PrivateAttr

from .catalog import POSTGRES_SCHEMES, load_catalog
from .warehouse import TAG_INTEGRATION, Lake, integration_lock, open_writer


class WarehouseResource(DuckDBResource):
    """dagster-duckdb's resource, opening the lake; a run holds its integration's lock throughout.

    `database` is the catalog file as given (the DuckDBResource field), or a PostgreSQL catalog's
    URL without its password; `data_path` the lake's data. A lake that needs secrets (a PostgreSQL
    catalog, S3 data) is read from `catalog_file` when the run opens it, so that no secret is in the
    resource's configuration, which the Dagster UI shows.
    """

    data_path: str = ""
    retention_days: int = 30
    catalog_file: str = ""
    _integration: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: Any) -> None:
        run = getattr(context, "dagster_run", None)
        self._integration = run.tags.get(TAG_INTEGRATION) if run is not None else None

    @property
    def lake(self) -> Lake:
        if self.catalog_file and (self.database.startswith(POSTGRES_SCHEMES) or self.data_path.startswith("s3://")):
            return Lake.of(load_catalog(self.catalog_file))
        return Lake(Path(self.database), Path(self.data_path), self.retention_days)

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:  # type: ignore[override]
        if self._integration:
            with integration_lock(self.lake, self._integration), open_writer(self.lake) as con:
                yield con
        else:
            with open_writer(self.lake) as con:
                yield con
