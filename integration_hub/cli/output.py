"""Printing for the command line: aligned tables for people, JSON for scripts, one line on failure.

Every failure of every command ends in `fail_with`: one line `error: <reason>` on stderr and a
non-zero exit code (2 for an invalid catalog, 1 otherwise). With `--json`, stdout stays empty
on failure, so a script either gets a JSON document or an exit code and a reason.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

EXIT_FAILED = 1
EXIT_INVALID_CATALOG = 2


class CommandError(Exception):
    """A command failed: the message is the one-line reason printed before exiting 1."""


def one_line(text: str) -> str:
    """Collapse line breaks and runs of spaces: a reason is always one line."""
    return " ".join(str(text).split())


def print_error(message: str) -> None:
    """The one line a failed command prints (on stderr)."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


def _catalog_lines(exc: Exception) -> list[str]:
    """An invalid catalog: one line per problem (one line in all when there is one problem)."""
    problems = getattr(exc, "problems", None) or [str(exc)]
    where = f" {exc.path}" if getattr(exc, "path", None) else ""  # type: ignore[attr-defined]
    if len(problems) == 1:
        return [f"invalid catalog{where}: {one_line(problems[0])}"]
    return [f"invalid catalog{where} ({len(problems)} problems):"] + [f"  - {one_line(p)}" for p in problems]


def fail_with(exc: BaseException) -> int:
    """Print the reason of a failed command and return its exit code; never a traceback."""
    from ..core.catalog import CatalogError

    if isinstance(exc, CatalogError):
        lines = _catalog_lines(exc)
        print_error(lines[0])
        for line in lines[1:]:
            print(line, file=sys.stderr)
        return EXIT_INVALID_CATALOG
    if isinstance(exc, CommandError) or _is_expected(exc):
        print_error(str(exc))
        return EXIT_FAILED
    # Something we did not foresee: still one line, with the kind of error to search for.
    text = str(exc).strip()
    print_error(f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__)
    return EXIT_FAILED


# Errors whose message is already written for a person (what, where, how to fix): "module:class".
EXPECTED_ERRORS = (
    "integration_hub.core.landing:LandingError",
    "integration_hub.core.warehouse:WarehouseError",
    "integration_hub.exports.sinks:SinkError",
    "integration_hub.exports.export:ExportError",
    "integration_hub.reports.factory:ReportError",
    "integration_hub.salesforce.auth:SalesforceAuthError",
    "integration_hub.salesforce.client:SalesforceApiError",
    "integration_hub.salesforce.sync:SyncError",
    "integration_hub.api.tokens:TokenError",
    "integration_hub.api.cli:ApiCommandError",
)


def _is_expected(exc: BaseException) -> bool:
    # Only modules already imported can have raised it: look them up instead of importing them all.
    for target in EXPECTED_ERRORS:
        module_name, class_name = target.split(":")
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return True
    return False


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, bool):
        return "yes" if value else "no"
    return one_line(str(value))


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Print rows as an aligned table; `columns` is (key, heading) pairs."""
    cells = [[heading for _, heading in columns]] + [[_text(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for n, line in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * width for width in widths))


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=_default, ensure_ascii=False)
    sys.stdout.write("\n")


def format_seconds(seconds: float | None) -> str | None:
    """A runtime for people: 0.25 s, 42.1 s, 3 min 5 s, 2 h 4 min."""
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
