"""A Dagster run's outcome as alerts see it: status, row counts and the run's own message.

The status is the run's `integration_hub/outcome` tag when it has one; a run Dagster marked
FAILURE is `failed` whatever it applied; otherwise the status follows from the run's rows of
`integration_runs` (one per source), by the rule every run is tagged with (core/outcome.py). Counts and messages always come from those rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from ..core.assets import TAG_INTEGRATION, TAG_OUTCOME
from ..core.catalog import AlertRule, Catalog
from ..core.outcome import outcome_of_statuses, source_message
from ..core.warehouse import open_reader, table_columns

OUTCOMES = ("success", "partial", "skipped", "failed")
MESSAGES_SHOWN = 3


@dataclass(frozen=True)
class RunOutcome:
    dagster_run_id: str
    integration: str
    status: str  # success | partial | skipped | failed
    rows_read: int | None = None  # None: the warehouse has no rows for the run
    rows_applied: int | None = None
    rows_rejected: int | None = None
    sources_failed: int = 0
    message: str = ""

    @property
    def rejected_ratio(self) -> float:
        return (self.rows_rejected or 0) / self.rows_read if self.rows_read else 0.0

    def problem_for(self, rule: AlertRule) -> str | None:
        """The trigger this outcome fires for a rule's thresholds: 'failed', 'partial' or None."""
        if self.status == "failed":
            return "failed"
        if self.status != "partial":
            return None
        if self.sources_failed > 0 or self.rejected_ratio > rule.partial_rejected_ratio:
            return "partial"
        # Tagged partial, with no rejected rows to hold against the threshold: something else failed.
        return "partial" if not self.rows_rejected else None

    def healthy_for(self, rule: AlertRule) -> bool:
        """Success, or a partial run within the rule's threshold (a skipped run says nothing)."""
        return self.status == "success" or (self.status == "partial" and self.problem_for(rule) is None)


@dataclass(frozen=True)
class _Rows:
    statuses: tuple[str, ...]
    rows_read: int
    rows_applied: int
    rows_rejected: int
    messages: tuple[str, ...]


def _rows_by_run(catalog: Catalog, run_ids: Sequence[str]) -> dict[str, _Rows]:
    """Each Dagster run's integration_runs rows, summed, in one query (of the last lake snapshot)."""
    if not run_ids:
        return {}
    with open_reader(catalog) as con:
        if con is None or not table_columns(con, "integration_runs"):
            return {}
        rows = con.execute(
            "SELECT dagster_run_id, list(status ORDER BY started_at), sum(rows_read), sum(rows_applied), "
            "sum(rows_rejected), list([source, message] ORDER BY started_at) FILTER "
            "(status IN ('failed', 'partial') AND coalesce(message, '') <> '') "
            "FROM integration_runs WHERE dagster_run_id IN (SELECT unnest(?)) GROUP BY dagster_run_id",
            [list(run_ids)],
        ).fetchall()
    return {
        run_id: _Rows(
            tuple(statuses), int(read or 0), int(applied or 0), int(rejected or 0),
            tuple(source_message(source, message) for source, message in messages or ()),
        )
        for run_id, statuses, read, applied, rejected, messages in rows
    }


def _join_messages(messages: Sequence[str]) -> str:
    shown = "; ".join(messages[:MESSAGES_SHOWN])
    more = len(messages) - MESSAGES_SHOWN
    return f"{shown}; and {more} more" if more > 0 else shown


def run_outcomes(
    catalog: Catalog, runs: Sequence[dg.DagsterRun], failure_messages: dict[str, str] | None = None
) -> dict[str, RunOutcome]:
    """The outcome of each run (of an integration job), reading the warehouse once."""
    rows = _rows_by_run(catalog, [run.run_id for run in runs])
    outcomes = {}
    for run in runs:
        found = rows.get(run.run_id)
        tagged = run.tags.get(TAG_OUTCOME)
        if run.status == dg.DagsterRunStatus.FAILURE:
            status = "failed"
        elif tagged in OUTCOMES:
            status = tagged
        else:
            status = outcome_of_statuses(found.statuses if found else ())
        message = _join_messages(found.messages) if found else ""
        if not message and failure_messages and run.run_id in failure_messages:
            message = failure_messages[run.run_id]
        outcomes[run.run_id] = RunOutcome(
            dagster_run_id=run.run_id,
            integration=run.tags.get(TAG_INTEGRATION, ""),
            status=status,
            rows_read=found.rows_read if found else None,
            rows_applied=found.rows_applied if found else None,
            rows_rejected=found.rows_rejected if found else None,
            sources_failed=sum(s == "failed" for s in found.statuses) if found else 0,
            message=message,
        )
    return outcomes


def previous_outcome(instance: dg.DagsterInstance, catalog: Catalog, run: dg.DagsterRun) -> RunOutcome | None:
    """The last finished run of the same integration before `run` that did something (not skipped)."""
    record = instance.get_run_record_by_id(run.run_id)
    if record is None:
        return None
    earlier = instance.get_run_records(
        filters=dg.RunsFilter(
            tags={TAG_INTEGRATION: run.tags[TAG_INTEGRATION]},
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
            created_before=record.create_timestamp,
        ),
        limit=10,
    )
    runs = [r.dagster_run for r in earlier if r.dagster_run.run_id != run.run_id]
    outcomes = run_outcomes(catalog, runs)
    return next((outcomes[r.run_id] for r in runs if outcomes[r.run_id].status != "skipped"), None)
