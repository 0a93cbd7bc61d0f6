"""`integration-hub`: the command line of the Data Integration Center."""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Sequence

from .output import fail_with, one_line, print_json

DESCRIPTION = """\
integration_hub moves per-user attributes between your systems and one DuckDB attribute store.
The catalog is --catalog, else $INTEGRATION_HUB_CATALOG, else ./integrations.yaml.
"""

# Kinds that add their own subcommands: module with `register(subparsers)`.
EXTENSIONS = (
    "integration_hub.cli.lake",
    "integration_hub.api.cli",
    "integration_hub.salesforce.cli",
    "integration_hub.alerts.cli",
)


def cmd_check(args: argparse.Namespace) -> int:
    from ..core.placement import state_locations
    from .hooks import hook
    from .management import catalog_from, find_integration

    catalog = catalog_from(args)
    integrations = [find_integration(catalog, args.name)] if args.name else catalog.integrations
    disabled, storage = (set(), None) if args.name else _instance_facts(catalog)
    # Where state lives (the whole deployment's, so not for one integration's check).
    state = [] if args.name else [s.as_dict() for s in state_locations(catalog, storage)]
    results: list[dict] = []
    for integration in integrations:
        if integration.name in disabled:
            # Not set up yet is what disabled often means: it does not fail the check of the rest.
            results.append({"name": integration.name, "ok": None, "skipped": True,
                            "message": f"disabled: not checked (integration-hub check {integration.name} checks it)"})
            continue
        check = hook("check", integration, default=None)
        if check is None:
            continue
        results += [{**o.__dict__, "skipped": False} for o in check(catalog, integration)]
    # A skipped (disabled) integration does not fail it.
    ok = all(r["ok"] is not False for r in results) and not any(s["problem"] for s in state)
    if args.json:
        print_json(
            {
                "ok": ok,
                "catalog": {
                    "connections": len(catalog.connections),
                    "integrations": len(catalog.integrations),
                    "reports": len(catalog.reports),
                },
                "state": state,
                "checks": results,
            }
        )
        return 0 if ok else 1
    print(
        f"catalog ok: {len(catalog.connections)} connections, {len(catalog.integrations)} integrations, "
        f"{len(catalog.reports)} reports"
    )
    for place in state:
        label = "FAIL" if place["problem"] else "ok  "
        where = "shared" if place["shared"] else "this machine"
        print(f"{label} state {place['state']}: {one_line(place['problem'] or place['location'])} ({where})")
    for result in results:
        label = "skip" if result["skipped"] else "ok  " if result["ok"] else "FAIL"
        print(f"{label} {result['name']}: {one_line(result['message'])}")
    return 0 if ok else 1


def _instance_facts(catalog) -> tuple[set[str], tuple[str, bool]]:
    """The integrations switched off (in the UI, by `disable`, or by the catalog's `enabled: false`),
    and how the Dagster instance stores its state."""
    from ..core.placement import dagster_storage
    from ..core.state import dagster_instance, is_enabled

    with dagster_instance(catalog) as instance:
        disabled = {i.name for i in catalog.integrations if not is_enabled(instance, i)}
        return disabled, dagster_storage(instance)


def build_parser() -> argparse.ArgumentParser:
    catalog_help = "the catalog file (default: $INTEGRATION_HUB_CATALOG or ./integrations.yaml)"
    parser = argparse.ArgumentParser(prog="integration-hub", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", metavar="PATH", help=catalog_help)
    # Also accepted after the command; SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--catalog", metavar="PATH", default=argparse.SUPPRESS, help=catalog_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, func_path: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help, description=help, parents=[common])
        command.set_defaults(func_path=func_path)
        return command

    p = add("integrations", "The management table: every integration with its source, schedule, last run and state.",
            "integration_hub.cli.management:cmd_integrations")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p = add("enable", "Enable an integration: start its sensor and schedule (the same switch as the Dagster UI).",
            "integration_hub.cli.management:cmd_enable")
    p.add_argument("name", help="the integration's name")
    p = add("disable", "Disable an integration: stop its sensor and schedule (the same switch as the Dagster UI).",
            "integration_hub.cli.management:cmd_disable")
    p.add_argument("name", help="the integration's name")
    p = add("run", "Run an integration now, recorded as a Dagster run; exits 1 if any file or record set failed.",
            "integration_hub.cli.management:cmd_run")
    p.add_argument("name", help="the integration's name")
    p.add_argument("--dry-run", action="store_true", help="show what a run would do without changing anything")
    p.add_argument("--full-resync", action="store_true", help="outbound: send every row, not only changed ones")
    p = add("discover", "Data discovery: columns, inferred types, sample values and a ready YAML snippet.",
            "integration_hub.cli.discovery:cmd_discover")
    p.add_argument("connection", help="a connection name from the catalog")
    p.add_argument("path", help="a file key (crm/users.csv) or a folder (crm: its newest file)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p = add("check", "Validate the catalog and test each connection for real, saying what failed and how to fix it.",
            "integration_hub.cli.main:cmd_check")
    p.add_argument("name", nargs="?", help="only this integration")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p = add("logs", "Run history of an integration, or the full log of one run.", "integration_hub.cli.logs:cmd_logs")
    p.add_argument("name", help="the integration's name")
    p.add_argument("--run", metavar="RUN_ID",
                   help="one run in full: a RUN id, or a Dagster run id (or its first characters) with every source")
    p.add_argument("--limit", type=int, default=50, help="how many runs to list (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p = add("migrate", "Copy a pre-lake warehouse file (one DuckDB database) into the lake, verified table by table.",
            "integration_hub.cli.migration:cmd_migrate")
    p.add_argument("old", metavar="OLD.duckdb", help="the old warehouse file (it is opened read-only)")
    p.add_argument("--json", action="store_true", help="print the per-table result as JSON")
    p = add("demo", "Write a sample catalog and data, then start the Dagster UI (what `make demo` runs).",
            "integration_hub.cli.demo:cmd_demo")
    p.add_argument("--dir", default="demo", help="where to write the demo (default ./demo)")
    p.add_argument("--port", type=int, default=3000, help="the Dagster UI port (default 3000; make demo PORT=...)")
    p.add_argument("--api-port", type=int, default=8080,
                   help="the End User Update API port (default 8080; make demo API_PORT=...)")
    p.add_argument("--no-ui", action="store_true", help="only write the demo files")

    for module in EXTENSIONS:
        try:
            extension = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue
            raise
        if len(inspect.signature(extension.register).parameters) >= 2:
            extension.register(sub, common)
        else:
            extension.register(sub)
    return parser


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`


def _quiet_python_logging() -> None:
    """Library warnings and log records never reach the terminal: commands print only their own lines.

    (Runs keep their full log, stack traces included, in the Dagster event log.)
    """
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())  # else Python's last-resort handler prints WARNINGs


def _stop_writing_stdout() -> None:
    """The reader of our output went away: send what is still buffered nowhere, so exit is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a file descriptor (e.g. captured in-process): nothing to silence


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_python_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "func"):
            code = int(args.func(args) or 0)
        else:
            module, function = args.func_path.split(":")
            code = int(getattr(importlib.import_module(module), function)(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # `integration-hub logs crm | head -1`: stop quietly, as Unix tools do.
        _stop_writing_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every failure ends in one line, not a traceback
        return fail_with(exc)


if __name__ == "__main__":
    sys.exit(main())
