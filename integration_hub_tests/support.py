"""Test helpers: a landing area with its catalog, and running integrations in-process."""

from __future__ import annotations

import gzip
import os
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from integration_hub.core.catalog import Catalog, load_catalog
from integration_hub.core.warehouse import open_reader

BUCKET = "acme-inbound"


def lake_settings(root: Path) -> dict[str, str]:
    """The catalog's `warehouse:` section for a lake in `root` (which must exist)."""
    return {"catalog": str(root / "catalog.sqlite"), "data_path": str(root / "lake")}

PREFIX = "inbound"

CRM_INTEGRATION: dict[str, Any] = {
    "name": "crm",
    "type": "s3_csv",
    "connection": "landing",
    "folder": "crm",
    "user_id_column": "email",
    "properties": [
        {"column": "Plan Tier", "name": "plan", "type": "string"},
        {"column": "tickets", "name": "support_tickets", "type": "number"},
        {"column": "is_active", "name": "active", "type": "boolean"},
        {"column": "signup", "name": "signup_date", "type": "date"},
        {"column": "last_login", "name": "last_login_at", "type": "datetime"},
    ],
    "schedule": "*/15 * * * *",
}


@dataclass
class Landing:
    """A landing area plus a catalog pointing at it; the same API for local and S3."""

    kind: str
    root: Path
    connection: dict[str, Any]
    s3: Any = None
    integrations: list[dict[str, Any]] = field(default_factory=list)
    _clock: float = field(default_factory=lambda: time.time() - 3600)

    # -- catalog ---------------------------------------------------------------
    def write_catalog(self, *integrations: dict[str, Any], **extra: Any) -> Catalog:
        document = {
            "warehouse": lake_settings(self.root),
            "landing": str(self.root / "api_landing"),
            "connections": [self.connection],
            "integrations": list(integrations) or [CRM_INTEGRATION],
            **extra,
        }
        path = self.root / "integrations.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return load_catalog(path)

    @property
    def catalog_path(self) -> Path:
        return self.root / "integrations.yaml"

    # -- files -----------------------------------------------------------------
    def put(self, key: str, content: str | bytes, compress: bool = True) -> str:
        """Drop a file; each drop is a little newer than the last (oldest-first order).

        A `.gz` key gets its content gzipped unless it already is, or `compress` is False.
        """
        data = content.encode("utf-8") if isinstance(content, str) else content
        if compress and key.endswith(".gz") and not data.startswith(b"\x1f\x8b"):
            data = gzip.compress(data)
        self._clock += 10
        if self.s3 is not None:
            self.s3.put_object(Bucket=BUCKET, Key=posixpath.join(PREFIX, key), Body=data)
            time.sleep(0.01)
        else:
            path = self.root / "landing" / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.utime(path, (self._clock, self._clock))
        return key

    def url(self, key: str) -> str:
        """The file as a user knows it: s3://bucket/prefix/key, or its path in the landing folder."""
        if self.s3 is not None:
            return f"s3://{BUCKET}/{posixpath.join(PREFIX, key)}"
        return str(self.root / "landing" / key)

    def keys(self, folder: str = "crm") -> list[str]:
        """Every file under a folder, recursively, relative to the folder."""
        if self.s3 is not None:
            prefix = posixpath.join(PREFIX, folder) + "/"
            paginator = self.s3.get_paginator("list_objects_v2")
            keys = [o["Key"] for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix) for o in page.get("Contents", [])]
            return sorted(k[len(prefix) :] for k in keys)
        base = self.root / "landing" / folder
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()) if base.exists() else []

    def read(self, key: str) -> str:
        if self.s3 is not None:
            return self.s3.get_object(Bucket=BUCKET, Key=posixpath.join(PREFIX, key))["Body"].read().decode("utf-8")
        return (self.root / "landing" / key).read_text(encoding="utf-8")


def local_landing_at(root: Path) -> Landing:
    """A landing area on a local folder under `root`."""
    (root / "landing").mkdir(parents=True)
    return Landing("local", root, {"name": "landing", "type": "local", "path": str(root / "landing")})


def run_job(catalog: Catalog, integration: str, files: list[str] | None = None) -> dg.ExecuteInProcessResult:
    """Run an integration's job in-process, as a schedule (files=None) or the sensor would.

    A run in which no source applied fails: `result.success` is False (no exception is raised).
    """
    return run_job_with_tags(catalog, integration, files)[0]


def run_job_with_tags(
    catalog: Catalog, integration: str, files: list[str] | None = None
) -> tuple[dg.ExecuteInProcessResult, dict[str, str]]:
    """run_job, and the run's tags as the Runs page shows them after the run (the outcome tag)."""
    from integration_hub.core.assets import attributes_key
    from integration_hub.definitions import build_definitions

    job = build_definitions(catalog).resolve_job_def(f"{integration}_job")
    run_config = {}
    if files is not None:
        run_config = {"ops": {attributes_key(integration).to_python_identifier(): {"config": {"files": files}}}}
    instance = _shared_instance()
    result = job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    return result, dict(run.tags)


_INSTANCE: list[dg.DagsterInstance] = []


def _shared_instance() -> dg.DagsterInstance:
    """One in-memory Dagster instance for run_job's runs in this process (making one costs ~0.2 s)."""
    if not _INSTANCE:
        _INSTANCE.append(dg.DagsterInstance.ephemeral())
    return _INSTANCE[0]


def failure_reason(result: dg.ExecuteInProcessResult) -> str:
    """The description of the Failure that made the run red."""
    [failure] = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.error.message


def step_error_text(result: dg.ExecuteInProcessResult) -> str:
    """The messages of the failed step's error and of every error it wraps (Dagster wraps the op's)."""
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error, message = failure.step_failure_data.error, ""
    while error is not None:
        message, error = message + error.message, error.cause
    return message


def query(catalog: Catalog, sql: str, params: list[Any] | None = None) -> list[tuple]:
    with open_reader(catalog) as con:
        assert con is not None, "the warehouse was never created"
        return con.execute(sql, params or []).fetchall()


def runs_of(catalog: Catalog, integration: str = "crm") -> list[dict[str, Any]]:
    with open_reader(catalog) as con:
        result = con.execute(
            "SELECT * FROM integration_runs WHERE integration = ? ORDER BY started_at, run_id", [integration]
        )
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]
