"""A run's outcome, from the sources it recorded: the one rule every integration kind follows.

A Dagster run applies zero or more sources (CSV files, API batches, an outbound sync or
export), each recorded as a RunRecord in `integration_runs`. The run's outcome:

* failed  - sources were pending and none applied (every one failed): the run fails (red);
* partial - some applied, some failed or had rejected rows/records: the run succeeds, tagged
            `partial`, and its check fails with WARN severity;
* success - every source applied in full;
* skipped - nothing to do (no source, or only ones already applied).

The value is the run tag `integration_hub/outcome`, which alerts and the Runs page filter on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .ingest import RunRecord

TAG_OUTCOME = "integration_hub/outcome"
Outcome = Literal["success", "partial", "skipped", "failed"]
# Which outcome a run keeps when several steps (or assets) report one: the worst.
SEVERITY: dict[str, int] = {"skipped": 0, "success": 1, "partial": 2, "failed": 3}
LISTED_SOURCES = 5  # a reason names this many sources, then "and N more"


@dataclass(frozen=True)
class RunOutcome:
    outcome: Outcome
    reason: str

    @property
    def ok(self) -> bool:
        """Whether every source applied in full (the WARN check passes)."""
        return self.outcome in ("success", "skipped")


def source_message(source: str, message: str) -> str:
    """A source's message, naming the source once (most messages already start with it)."""
    return message if message.startswith(source) else f"{source}: {message}"


def _described(run: RunRecord) -> str:
    return source_message(run.source, run.message or run.status)


def _listed(runs: Sequence[RunRecord]) -> str:
    shown = "; ".join(_described(r) for r in runs[:LISTED_SOURCES])
    more = len(runs) - LISTED_SOURCES
    return shown + (f"; and {more} more (see `integration-hub logs`)" if more > 0 else "")


def outcome_of_statuses(statuses: Sequence[str]) -> Outcome:
    """The rule itself, from the `integration_runs.status` of each source of one run."""
    applied = any(s in ("success", "partial") for s in statuses)
    if "failed" in statuses and not applied:
        return "failed"
    if "failed" in statuses or "partial" in statuses:
        return "partial"
    return "success" if applied else "skipped"


def run_outcome(runs: Sequence[RunRecord]) -> RunOutcome:
    """The outcome of one Dagster run from the records of the sources it handled, with the reason."""
    if not runs:
        return RunOutcome("skipped", "nothing to do: no pending source")
    outcome = outcome_of_statuses([r.status for r in runs])
    failed = [r for r in runs if r.status == "failed"]
    partial = [r for r in runs if r.status == "partial"]
    applied = [r for r in runs if r.status in ("success", "partial")]
    if outcome == "failed" and len(runs) == 1:
        return RunOutcome("failed", f"{_described(runs[0])} (nothing applied: the run's only source failed)")
    if outcome == "failed":
        what = f"all {len(failed)} sources" if len(failed) == len(runs) else (
            f"{len(failed)} of {len(runs)} sources (the others were already applied)"
        )
        return RunOutcome("failed", f"nothing applied: {what} failed. {_listed(failed)}")
    if outcome == "partial":
        parts = []
        if failed:
            parts.append(f"{len(failed)} of {len(runs)} sources failed ({_listed(failed)})")
        if partial:
            rejected = sum(r.rows_rejected for r in partial)
            parts.append(f"{len(partial)} applied with {rejected} rejected rows ({_listed(partial)})")
        return RunOutcome("partial", "; ".join(parts))
    if outcome == "skipped":
        return RunOutcome("skipped", f"nothing to do: {_listed(runs)}")
    return RunOutcome("success", f"{len(applied)} source(s) applied in full")


def worst(*outcomes: str | None) -> str | None:
    """The outcome a run keeps when several steps report one (failed > partial > success > skipped)."""
    known = [o for o in outcomes if o in SEVERITY]
    return max(known, key=SEVERITY.__getitem__) if known else None
