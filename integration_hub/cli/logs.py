"""`integration-hub logs NAME [--run RUN_ID]`: run history, and one run with every source and its full log.

Two records describe a run: `integration_runs` (one row per source: a file, an API batch, a
report sent out) and the Dagster run that processed them (its status, and its event log with
any stack trace). `--run` accepts either id, or the first characters of a Dagster run id as the
Dagster UI shows them.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import duckdb

from ..core.catalog import Integration
from ..core.state import dagster_instance, job_name
from ..core.warehouse import open_reader
from .hooks import hook
from .management import catalog_from, find_integration
from .output import CommandError, format_seconds, one_line, print_json, print_table

REJECTED_LIMIT = 1000  # rejected rows shown per source
SHORT_ID = 8  # characters of a Dagster run id shown in tables (as the Dagster UI does)


@dataclass
class DagsterRunInfo:
    """A Dagster run as `logs` shows it, with the error and stack trace of a failed run."""

    run_id: str
    job: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    tags: dict[str, str] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)  # step, message, stack_trace

    @property
    def runtime_seconds(self) -> float | None:
        return runtime(self.started_at, self.finished_at)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "job": self.job,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "runtime_seconds": self.runtime_seconds,
            "tags": self.tags,
            "errors": self.errors,
        }


def runtime(started: datetime | None, finished: datetime | None) -> float | None:
    if started is None or finished is None:
        return None
    return round((finished - started).total_seconds(), 3)


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=timezone.utc)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    result = con.execute(sql, params)
    names = [d[0] for d in result.description]
    return [dict(zip(names, row, strict=True)) for row in result.fetchall()]


def _with_runtime(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for run in runs:
        run["details"] = json.loads(run["details"]) if run.get("details") else {}
        run["runtime_seconds"] = runtime(run.get("started_at"), run.get("finished_at"))
    return runs


# ---------------------------------------------------------------------------- Dagster

# Dagster wraps an exception raised in an op ("Error occurred while executing op ...") with the
# exception itself as the cause: the reason to show is the innermost one.
DAGSTER_WRAPPERS = ("DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError")


def error_reason(error: Any) -> str:
    """One line from a Dagster SerializableErrorInfo: the words of the exception that failed the step."""
    while error.cause is not None and error.cls_name in DAGSTER_WRAPPERS:
        error = error.cause
    lines = error.message.strip().splitlines()
    # The message starts with the exception's class ("dagster._core.definitions.events.Failure: ..."): keep the words.
    return one_line(re.sub(r"^[\w.]+(Error|Exception|Failure): ", "", lines[0] if lines else error.cls_name or ""))


def _errors_of(instance: Any, run_id: str) -> list[dict[str, str]]:
    """Step failures of a run (else the run failure itself) with their stack traces, from the event log."""
    import dagster as dg

    errors = []
    for entry in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_FAILURE}):
        error = entry.dagster_event.step_failure_data.error if entry.dagster_event else None
        if error is not None:
            errors.append({"step": entry.step_key or "", "message": error_reason(error),
                           "stack_trace": error.to_string()})
    if errors:
        return errors
    for entry in instance.all_logs(run_id, of_type={dg.DagsterEventType.RUN_FAILURE}):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        error = getattr(data, "error", None)
        if error is not None:
            errors.append({"step": "", "message": error_reason(error), "stack_trace": error.to_string()})
        elif entry.dagster_event is not None and entry.dagster_event.message:
            errors.append({"step": "", "message": one_line(entry.dagster_event.message), "stack_trace": ""})
    return errors


def _dagster_info(instance: Any, record: Any) -> DagsterRunInfo:
    run = record.dagster_run
    status = run.status.value.lower()
    return DagsterRunInfo(
        run_id=run.run_id,
        job=run.job_name,
        status={"failure": "failed"}.get(status, status),
        started_at=_utc(record.start_time),
        finished_at=_utc(record.end_time),
        tags={k: v for k, v in run.tags.items() if not k.startswith(".dagster")},
        errors=_errors_of(instance, run.run_id) if status == "failure" else [],
    )


def _dagster_records(instance: Any, integration: Integration, prefix: str | None = None, limit: int | None = None) -> list[Any]:
    """The integration's Dagster runs, newest first; with `prefix`, those whose id starts with it."""
    import dagster as dg

    if prefix and len(prefix) >= 32:  # a whole id: one look-up
        record = instance.get_run_record_by_id(prefix)
        return [record] if record is not None and record.dagster_run.job_name == job_name(integration) else []
    records = instance.get_run_records(dg.RunsFilter(job_name=job_name(integration)), limit=None if prefix else limit)
    return [r for r in records if not prefix or r.dagster_run.run_id.startswith(prefix)]


# ---------------------------------------------------------------------------- the command


def cmd_logs(args: argparse.Namespace) -> int:
    catalog = catalog_from(args)
    integration = find_integration(catalog, args.name)
    if args.run:
        return _one_run(catalog, integration, args.run, args.json)
    with open_reader(catalog) as con:
        runs: list[dict[str, Any]] = []
        if con is not None and _has_runs_table(con):
            runs = _with_runtime(_rows(
                con,
                "SELECT * FROM integration_runs WHERE integration = ? ORDER BY started_at DESC LIMIT ?",
                [integration.name, args.limit],
            ))
    runs = _merge_unrecorded_failures(catalog, integration, runs, args.limit)
    if args.json:
        print_json(runs)
        return 0
    if not runs:
        print(f"{integration.name}: no runs yet")
        return 0
    for run in runs:
        run["runtime"] = format_seconds(run["runtime_seconds"])
        run["dagster_run"] = (run.get("dagster_run_id") or "")[:SHORT_ID] or None
    print_table(
        runs,
        [
            ("run_id", "RUN"),
            ("dagster_run", "DAGSTER RUN"),
            ("started_at", "STARTED"),
            ("runtime", "RUNTIME"),
            ("status", "STATUS"),
            ("rows_read", "READ"),
            ("rows_applied", "APPLIED"),
            ("rows_rejected", "REJECTED"),
            ("source", "SOURCE"),
            ("message", "MESSAGE"),
        ],
    )
    return 0


def _has_runs_table(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'integration_runs'"
    ).fetchone()[0])


def _merge_unrecorded_failures(catalog: Any, integration: Integration, runs: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Failed Dagster runs that recorded no source (e.g. the bucket was unreachable) belong in the history too."""
    recorded = {r.get("dagster_run_id") for r in runs}
    with dagster_instance(catalog) as instance:
        for record in _dagster_records(instance, integration, limit=limit):
            if record.dagster_run.run_id in recorded or record.dagster_run.status.value != "FAILURE":
                continue
            info = _dagster_info(instance, record)
            runs.append(_unrecorded_row(integration, info))
    runs.sort(key=lambda r: r["started_at"] or datetime.min.replace(tzinfo=timezone.utc), reverse=True)
    return runs[:limit]


def _unrecorded_row(integration: Integration, info: DagsterRunInfo) -> dict[str, Any]:
    """A failed Dagster run that got no integration_runs row, in the same shape."""
    message = info.errors[0]["message"] if info.errors else "the Dagster run failed"
    return {
        "run_id": None,
        "integration": integration.name,
        "kind": integration.type,
        "source": None,
        "started_at": info.started_at,
        "finished_at": info.finished_at,
        "status": "failed",
        "rows_read": 0,
        "rows_applied": 0,
        "rows_rejected": 0,
        "properties_imported": 0,
        "message": message,
        "dagster_run_id": info.run_id,
        "details": {},
        "runtime_seconds": info.runtime_seconds,
    }


def _one_run(catalog: Any, integration: Integration, wanted: str, as_json: bool) -> int:
    """`logs NAME --run ID`: an integration run in full, or a Dagster run with every source it processed."""
    name = integration.name
    sources: list[dict[str, Any]] = []
    dagster_run_id: str | None = None
    with open_reader(catalog) as con:
        if con is not None and _has_runs_table(con):
            sources = _rows(con, "SELECT * FROM integration_runs WHERE integration = ? AND run_id = ?", [name, wanted])
            if sources:
                dagster_run_id = sources[0].get("dagster_run_id")
            else:
                matches = _rows(
                    con,
                    "SELECT DISTINCT dagster_run_id FROM integration_runs WHERE integration = ? "
                    "AND starts_with(dagster_run_id, ?)",
                    [name, wanted],
                )
                dagster_run_id = _only([m["dagster_run_id"] for m in matches], wanted, name)
                if dagster_run_id:
                    sources = _rows(
                        con,
                        "SELECT * FROM integration_runs WHERE integration = ? AND dagster_run_id = ? "
                        "ORDER BY started_at, run_id",
                        [name, dagster_run_id],
                    )
            _with_runtime(sources)
            for source in sources:
                source["rejected_rows"] = _rows(
                    con,
                    "SELECT row_number, user_id, column_name, value, reason FROM rejected_rows WHERE run_id = ? "
                    "ORDER BY row_number LIMIT ?",
                    [source["run_id"], REJECTED_LIMIT],
                ) if _has_table(con, "rejected_rows") else []
                source.update(hook("run_details", integration, default=lambda *_: {})(con, source))
    info = None
    with dagster_instance(catalog) as instance:
        if dagster_run_id is None:
            found = _dagster_records(instance, integration, prefix=wanted)
            dagster_run_id = _only([r.dagster_run.run_id for r in found], wanted, name)
        if dagster_run_id:
            record = instance.get_run_record_by_id(dagster_run_id)
            info = _dagster_info(instance, record) if record is not None else None
    if not sources and info is None:
        raise CommandError(f"no run {wanted!r} for {name}; list runs with `integration-hub logs {name}`")
    if as_json:
        print_json({"dagster_run": info.as_dict() if info else None, "sources": sources})
        return 0
    if info is not None:
        _print_dagster_run(info)
    if len(sources) == 1:
        print()
        _print_source(sources[0])
    elif sources:
        print()
        _print_sources_table(sources)
        print(f"\none source in full: integration-hub logs {name} --run RUN")
    else:
        print("\nno source was recorded: the run failed before it processed any")
    if info is not None and info.errors:
        for error in info.errors:
            step = f" in step {error['step']}" if error["step"] else ""
            print(f"\nerror{step}:")
            print(error["stack_trace"].rstrip() or error["message"])
    return 0


def _has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0])


def _only(ids: list[str], wanted: str, name: str) -> str | None:
    """The one run id a (prefix of an) id names; an ambiguous prefix is an error."""
    ids = sorted(set(ids))
    if len(ids) > 1:
        shown = ", ".join(i[:12] for i in ids[:5])
        raise CommandError(f"{wanted!r} matches {len(ids)} runs of {name} ({shown}); give more of the run id")
    return ids[0] if ids else None


def _print_dagster_run(info: DagsterRunInfo) -> None:
    trigger = info.tags.get("integration_hub/trigger") or info.tags.get("dagster/sensor_name") or info.tags.get(
        "dagster/schedule_name")
    lines = [
        ("dagster run", f"{info.run_id} (job {info.job})"),
        ("status", info.status),
        ("started", info.started_at.strftime("%Y-%m-%d %H:%M:%S UTC") if info.started_at else "-"),
        ("runtime", format_seconds(info.runtime_seconds) or "-"),
    ]
    if trigger:
        lines.append(("trigger", trigger))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")


def _print_sources_table(sources: list[dict[str, Any]]) -> None:
    for source in sources:
        source["runtime"] = format_seconds(source["runtime_seconds"])
    print_table(
        sources,
        [
            ("source", "SOURCE"),
            ("status", "STATUS"),
            ("runtime", "RUNTIME"),
            ("rows_read", "READ"),
            ("rows_applied", "APPLIED"),
            ("rows_rejected", "REJECTED"),
            ("run_id", "RUN"),
            ("message", "MESSAGE"),
        ],
    )


def _print_source(run: dict[str, Any]) -> None:
    shown: dict[str, Any] = {}
    for key, value in run.items():
        if key == "runtime_seconds":
            shown["runtime"] = format_seconds(value)
        else:
            shown[key] = value
    keys = [k for k in shown if k not in ("rejected_rows", "details") and not isinstance(shown[k], list)]
    width = max(len(k) for k in keys)
    for key in keys:
        value = shown[key]
        print(f"{key.ljust(width)}  {one_line(str(value)) if value is not None else '-'}")
    for key, value in (run.get("details") or {}).items():
        print(f"{key.ljust(width)}  {value}")
    for key, value in shown.items():
        if isinstance(value, list) and value and key != "rejected_rows":
            print(f"\n{key}:")
            print_table(value, [(k, k.upper()) for k in value[0]])
    if run.get("rejected_rows"):
        print("\nrejected rows:")
        print_table(
            run["rejected_rows"],
            [("row_number", "ROW"), ("user_id", "USER"), ("column_name", "COLUMN"), ("value", "VALUE"), ("reason", "REASON")],
        )
