"""`integration-hub salesforce connect|disconnect CONNECTION`: OAuth 2.0 for a Salesforce connection.

`connect` runs the authorization-code flow with PKCE: it prints the authorize URL (and opens a
browser when it can), waits for Salesforce's redirect to http://localhost:<callback_port>/OauthRedirect,
and stores the refresh token encrypted ($INTEGRATION_HUB_SECRET_KEY). `disconnect` revokes the
token at Salesforce and deletes it. Neither prints a token.
"""

from __future__ import annotations

import argparse
import sys

from ..core.catalog import Catalog, SalesforceConnection


def _connection(catalog: Catalog, name: str) -> SalesforceConnection:
    from ..cli.output import CommandError

    try:
        connection = catalog.connection(name)
    except KeyError:
        known = ", ".join(c.name for c in catalog.connections if isinstance(c, SalesforceConnection)) or "none"
        raise CommandError(f"no connection named {name!r} in the catalog (Salesforce connections: {known})") from None
    if not isinstance(connection, SalesforceConnection):
        raise CommandError(f"connection {name!r} is a {connection.type} connection, not a salesforce one")
    return connection


def cmd_connect(args: argparse.Namespace) -> int:
    from ..cli.management import catalog_from
    from ..cli.output import CommandError
    from .auth import SalesforceAuthError, connect_oauth, login_host, redirect_uri
    from .client import SalesforceApiError, SalesforceClient

    catalog = catalog_from(args)
    connection = _connection(catalog, args.connection)
    try:
        if connection.auth == "jwt":
            client = SalesforceClient(catalog, connection)
            print(
                f"{connection.name} uses the JWT bearer flow: logged in to {client.instance_url} as "
                f"{connection.username}; there is nothing to store (each run signs in with the private key)"
            )
            return 0

        def show(url: str) -> None:
            print(f"Log in to Salesforce ({connection.environment}, {login_host(connection)}) and allow access:")
            print(f"  {url}")
            print(f"Waiting for Salesforce to redirect to {redirect_uri(connection)} ...", flush=True)

        result = connect_oauth(catalog, connection, on_url=show, open_browser=not args.no_browser,
                               timeout=args.timeout)
    except (SalesforceAuthError, SalesforceApiError) as exc:
        raise CommandError(str(exc)) from None
    who = f" as {result.username}" if result.username else ""
    print(f"connected {connection.name} to {result.instance_url}{who}; the refresh token is stored encrypted in "
          f"{result.token_file}")
    return 0


def cmd_disconnect(args: argparse.Namespace) -> int:
    from ..cli.management import catalog_from
    from ..cli.output import CommandError
    from .auth import SalesforceAuthError, disconnect

    catalog = catalog_from(args)
    connection = _connection(catalog, args.connection)
    if connection.auth == "jwt":
        print(f"{connection.name} uses the JWT bearer flow: no token is stored, so there is nothing to revoke "
              "(remove the certificate from the connected app to cut access)")
        return 0
    try:
        result = disconnect(catalog, connection, forget=args.forget)
    except SalesforceAuthError as exc:
        raise CommandError(str(exc)) from None
    if not result.had_token:
        print(f"{connection.name} is not connected (no token in {result.token_file}); nothing to do")
    elif result.revoked:
        print(f"disconnected {connection.name}: the refresh token was revoked at Salesforce and deleted from "
              f"{result.token_file}")
    else:
        print(f"disconnected {connection.name}: Salesforce no longer accepted the token (already revoked or "
              f"expired); deleted {result.token_file}", file=sys.stdout)
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    description = "Connect or disconnect a Salesforce org (OAuth 2.0; tokens are stored encrypted, never shown)."
    parser = subparsers.add_parser("salesforce", parents=[common], help=description, description=description)
    nested = parser.add_subparsers(dest="salesforce_command", metavar="SUBCOMMAND", required=True)

    help_text = ("Authorize integration-hub in a browser (authorization code + PKCE) and store the refresh token "
                 "encrypted with $INTEGRATION_HUB_SECRET_KEY.")
    p = nested.add_parser("connect", parents=[common], help=help_text, description=help_text)
    p.add_argument("connection", help="a salesforce connection from the catalog")
    p.add_argument("--no-browser", action="store_true", help="only print the URL to open, do not start a browser")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the login (default 300)")
    p.set_defaults(func=cmd_connect)

    help_text = "Revoke the connection's refresh token at Salesforce and delete it."
    p = nested.add_parser("disconnect", parents=[common], help=help_text, description=help_text)
    p.add_argument("connection", help="a salesforce connection from the catalog")
    p.add_argument("--forget", action="store_true",
                   help="delete the stored token even if Salesforce cannot be reached to revoke it")
    p.set_defaults(func=cmd_disconnect)
