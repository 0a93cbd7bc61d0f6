"""`integration-hub alerts test DESTINATION`: send a test alert to one destination of the catalog."""

from __future__ import annotations

import argparse


def cmd_test(args: argparse.Namespace) -> int:
    from ..cli.management import catalog_from
    from ..cli.output import CommandError, print_json
    from ..core.alerts import Alert, DeliveryError, Masker, dagster_link, deliver, describe

    catalog = catalog_from(args)
    try:
        destination = catalog.alerts.destination(args.destination)
    except KeyError as exc:
        raise CommandError(exc.args[0]) from None
    masker = Masker(catalog.env_variables)
    where = masker(describe(destination))
    alert = Alert(
        "test",
        None,
        f"a test from `integration-hub alerts test {destination.name}`: alerts reach {where}",
        url=dagster_link(catalog.alerts, "/"),
    ).masked(masker)
    try:
        attempts = deliver(catalog, destination, alert)
    except DeliveryError as exc:
        raise CommandError(f"test alert to {where} failed: {masker(str(exc))}") from None
    except Exception as exc:  # noqa: BLE001 - one masked line, never a traceback with the URL in it
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CommandError(f"test alert to {where} failed: {type(exc).__name__}: {masker(reason)}") from None
    if args.json:
        print_json({"destination": destination.name, "sent": True, "attempts": attempts})
    else:
        print(f"sent a test alert to {where}" + (f" ({attempts} attempts)" if attempts > 1 else ""))
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    description = "Alerts on failed, partial, stale and failing-check integrations (see docs/operations.md)."
    parser = subparsers.add_parser("alerts", parents=[common], help=description, description=description)
    nested = parser.add_subparsers(dest="alerts_command", metavar="SUBCOMMAND", required=True)
    help_text = "Send a test alert to one destination of the catalog's alerts section; exits 1 if it fails."
    p = nested.add_parser("test", parents=[common], help=help_text, description=help_text)
    p.add_argument("destination", help="a destination name under alerts.destinations")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_test)
