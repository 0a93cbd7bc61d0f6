"""Commands of the End User Update API: `api`, `tokens create|list|revoke`, `endpoint`.

`register(subparsers)` adds them to the `integration-hub` command line; each handler takes
the parsed arguments (with `args.catalog`) and returns the exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

from ..cli.output import fail_with, print_json
from ..core.catalog import ApiIntegration, Catalog, CatalogError, load_catalog

if TYPE_CHECKING:
    from .tokens import TokenStore

URL_ENV = "INTEGRATION_HUB_API_URL"
DEFAULT_PORT = 8080
ENDPOINT_PATH = "/v1/end-users"


class ApiCommandError(Exception):
    """A command failed: the message is the one-line reason."""


def _catalog(args: argparse.Namespace) -> Catalog:
    return load_catalog(getattr(args, "catalog", None))


def _token_store(catalog: Catalog) -> TokenStore:
    from .tokens import token_store

    return token_store(catalog)


def _guard(handler):
    """Turn expected failures into one line on stderr and exit code 1 (2 for an invalid catalog)."""

    def run(args: argparse.Namespace) -> int:
        from .tokens import TokenError

        try:
            return handler(args)
        except (CatalogError, ApiCommandError, TokenError) as exc:
            return fail_with(exc)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


# ---------------------------------------------------------------------------- api


@_guard
def cmd_api(args: argparse.Namespace) -> int:
    """Serve the End User Update API."""
    from .server import ApiSettings, serve

    catalog = _catalog(args)
    settings = ApiSettings(
        max_body_bytes=args.max_body_bytes,
        max_records=args.max_records,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        max_header_bytes=args.max_header_bytes,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        claim_timeout=args.claim_timeout,
    )
    if args.workers < 1:
        raise ApiCommandError("--workers must be at least 1")
    if settings.max_body_bytes < 1024 or settings.max_records < 1:
        raise ApiCommandError("--max-body-bytes must be at least 1024 and --max-records at least 1")
    if settings.max_header_bytes < 1024:
        raise ApiCommandError("--max-header-bytes must be at least 1024")
    if settings.claim_timeout < 5:
        raise ApiCommandError("--claim-timeout must be at least 5 seconds: a live replica may take that long to land a batch")
    if not (settings.header_timeout > 0 and settings.body_timeout > 0):
        raise ApiCommandError("--header-timeout and --body-timeout must be more than 0 seconds")
    api = [i.name for i in catalog.integrations if isinstance(i, ApiIntegration)]
    if not api:
        print(
            "warning: the catalog declares no `type: api` integration; every request will get 404",
            file=sys.stderr,
        )
    catalog_path = getattr(args, "catalog", None)
    serve(
        catalog_path,
        host=args.host,
        port=args.port,
        workers=args.workers,
        settings=settings,
        log_level=args.log_level,
        access_log=not args.no_access_log,
    )
    return 0


# ---------------------------------------------------------------------------- tokens


@_guard
def cmd_tokens_create(args: argparse.Namespace) -> int:
    """Issue a bearer token; it is shown once."""
    catalog = _catalog(args)
    with _token_store(catalog) as store:
        token = store.create_bearer(args.name)
    if args.json:
        print_json({"name": args.name, "token": token})
    else:
        print(
            f"bearer token {args.name!r} created. It is shown only this once; store it in your secret manager:\n"
        )
        print(f"  {token}\n")
        print(f"Send it as the header:  Authorization: Bearer {token[:8]}...")
    return 0


@_guard
def cmd_tokens_list(args: argparse.Namespace) -> int:
    """List bearer tokens (names and dates only; tokens are never shown again)."""
    catalog = _catalog(args)
    with _token_store(catalog) as store:
        tokens = store.list_bearers()
    rows = [
        {
            "name": t.name,
            "created_at": t.created_at,
            "status": "active" if t.active else "revoked",
            "revoked_at": t.revoked_at,
        }
        for t in tokens
    ]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no bearer tokens yet: create one with integration-hub tokens create NAME")
        return 0
    headings = [
        ("name", "NAME"),
        ("status", "STATUS"),
        ("created_at", "CREATED (UTC)"),
        ("revoked_at", "REVOKED (UTC)"),
    ]
    cells = [[h for _, h in headings]] + [[str(r[k] or "-") for k, _ in headings] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headings))]
    for n, line in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    return 0


@_guard
def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    """Revoke a bearer token: requests with it get 401 at once, also in a running server."""
    catalog = _catalog(args)
    with _token_store(catalog) as store:
        store.revoke_bearer(args.name)
    print(f"bearer token {args.name!r} revoked: requests with it now get 401")
    return 0


# ---------------------------------------------------------------------------- endpoint


def endpoint_url(base: str | None = None) -> str:
    base = (base or os.environ.get(URL_ENV) or f"http://127.0.0.1:{DEFAULT_PORT}").rstrip("/")
    return base + ENDPOINT_PATH


def curl_example(url: str, integration: ApiIntegration, integration_token: str | None) -> str:
    record: dict[str, Any] = {integration.user_id_property: "user-123"}
    samples = {
        "string": "gold",
        "number": 42,
        "boolean": True,
        "date": "2024-05-01",
        "datetime": "2024-05-01T13:45:00Z",
    }
    for prop in integration.properties[:4]:
        record[prop.property] = samples[prop.type]
    body = json.dumps({"integration_token": integration_token or "<integration token>", "data": [record]})
    return (
        f"curl -sS -X POST {shlex.quote(url)} \\\n"
        f'  -H "Authorization: Bearer $INTEGRATION_HUB_TOKEN" \\\n'
        f"  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(body)}"
    )


@_guard
def cmd_endpoint(args: argparse.Namespace) -> int:
    """An API integration's endpoint URL and integration token (issued once; --rotate issues a new one)."""
    catalog = _catalog(args)
    try:
        integration = catalog.integration(args.name)
    except KeyError:
        api = (
            ", ".join(i.name for i in catalog.integrations if isinstance(i, ApiIntegration))
            or "none declared"
        )
        raise ApiCommandError(
            f"no integration named {args.name!r} in the catalog (API integrations: {api})"
        ) from None
    if not isinstance(integration, ApiIntegration):
        raise ApiCommandError(
            f"{args.name!r} is a {integration.type} integration: endpoints belong to `type: api` integrations"
        )
    with _token_store(catalog) as store:
        issued_at = store.integration_token_issued(integration.name)
        token = None
        if args.rotate or issued_at is None:
            token = store.issue_integration_token(integration.name)
    url = endpoint_url(args.url)
    if args.json:
        print_json({"url": url, "integration_token": token})
        return 0
    print(f"endpoint for {integration.name} (system {integration.system}, {integration.environment}):\n")
    print(f"  POST {url}\n")
    if token:
        verb = "rotated: the previous token stopped working" if args.rotate and issued_at else "issued"
        print(
            f"integration token ({verb}). It is shown only this once; store it with your client's secrets:\n"
        )
        print(f"  {token}\n")
    else:
        print(
            f"integration token: issued {issued_at}; it is shown only when issued. "
            f"Lost it? integration-hub endpoint {integration.name} --rotate\n"
        )
    if not integration.enabled:
        print("note: this integration is disabled in the catalog: requests get 404 until it is enabled\n")
    print(
        "example (export INTEGRATION_HUB_TOKEN=<a bearer token from integration-hub tokens create NAME>):\n"
    )
    print(curl_example(url, integration, token))
    return 0


# ---------------------------------------------------------------------------- registration


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser | None = None) -> None:
    """Add `api`, `tokens` and `endpoint` to the integration-hub command line."""
    parents = [common] if common is not None else []

    def env_int(name: str, default: int) -> int:
        return int(os.environ.get(f"INTEGRATION_HUB_API_{name}", default))

    def env_float(name: str, default: float) -> float:
        return float(os.environ.get(f"INTEGRATION_HUB_API_{name}", default))

    api = subparsers.add_parser(
        "api",
        parents=parents,
        help="Serve the End User Update API (POST /v1/end-users; OpenAPI at /docs).",
        description=(
            "Serve the End User Update API with uvicorn. A 202 means the accepted records are on disk; "
            "the integration's sensor applies them to DuckDB (run `dagster dev` or `integration-hub demo`). "
            "Limits can also be set with $INTEGRATION_HUB_API_MAX_BODY_BYTES, _MAX_RECORDS, _RATE_LIMIT, "
            "_RATE_BURST, _MAX_HEADER_BYTES, _HEADER_TIMEOUT, _BODY_TIMEOUT, _CLAIM_TIMEOUT."
        ),
    )
    api.add_argument(
        "--host",
        default=os.environ.get("INTEGRATION_HUB_API_HOST", "127.0.0.1"),
        help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)",
    )
    api.add_argument(
        "--port", type=int, default=env_int("PORT", DEFAULT_PORT), help=f"port (default {DEFAULT_PORT})"
    )
    api.add_argument(
        "--workers", type=int, default=env_int("WORKERS", 1), help="worker processes (default 1)"
    )
    api.add_argument(
        "--max-body-bytes",
        type=int,
        default=env_int("MAX_BODY_BYTES", 5 * 1024 * 1024),
        help="largest request body in bytes (default 5242880 = 5 MB); larger gets 413",
    )
    api.add_argument(
        "--max-records",
        type=int,
        default=env_int("MAX_RECORDS", 2000),
        help="most records per request (default 2000); more gets 413",
    )
    api.add_argument(
        "--rate-limit",
        type=float,
        default=float(os.environ.get("INTEGRATION_HUB_API_RATE_LIMIT", 250)),
        help="requests per second per bearer token (default 250; 0 = no limit); more gets 429",
    )
    api.add_argument(
        "--rate-burst",
        type=int,
        default=env_int("RATE_BURST", 500),
        help="requests a token may send at once before --rate-limit applies (default 500)",
    )
    api.add_argument(
        "--max-header-bytes",
        type=int,
        default=env_int("MAX_HEADER_BYTES", 16 * 1024),
        help="largest request line and headers together, in bytes (default 16384); larger gets 431",
    )
    api.add_argument(
        "--header-timeout",
        type=float,
        default=env_float("HEADER_TIMEOUT", 10.0),
        metavar="SECONDS",
        help="the request line and headers must arrive within this (default 10); else 408",
    )
    api.add_argument(
        "--body-timeout",
        type=float,
        default=env_float("BODY_TIMEOUT", 10.0),
        metavar="SECONDS",
        help="the longest pause allowed in the middle of a body (default 10); else 408",
    )
    api.add_argument(
        "--claim-timeout",
        type=float,
        default=env_float("CLAIM_TIMEOUT", 60.0),
        metavar="SECONDS",
        help="with an S3 landing: after this, another replica takes over an Idempotency-Key whose replica "
        "died before its batch landed (default 60; at least 5)",
    )
    api.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    api.add_argument("--no-access-log", action="store_true", help="do not log each request")
    api.set_defaults(func=cmd_api)

    tokens = subparsers.add_parser(
        "tokens",
        parents=parents,
        help="Bearer tokens of the API: create NAME | list | revoke NAME.",
        description="Bearer tokens authenticate API clients. A token is shown once and stored only as a hash.",
    )
    actions = tokens.add_subparsers(dest="tokens_action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        parents=parents,
        help="issue a token (shown once)",
        description="Issue a bearer token; it is shown once and stored only as a hash.",
    )
    create.add_argument("name", help="a name for the token, e.g. the client system")
    create.add_argument("--json", action="store_true", help='print {"name", "token"} for scripts')
    create.set_defaults(func=cmd_tokens_create)
    listing = actions.add_parser(
        "list",
        parents=parents,
        help="list tokens (names and dates)",
        description="List bearer tokens: names, state and dates (never the tokens).",
    )
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    listing.set_defaults(func=cmd_tokens_list)
    revoke = actions.add_parser(
        "revoke",
        parents=parents,
        help="revoke a token (effective at once)",
        description="Revoke a bearer token: it gets 401 at once, also in a running server.",
    )
    revoke.add_argument("name", help="the token's name")
    revoke.set_defaults(func=cmd_tokens_revoke)

    endpoint = subparsers.add_parser(
        "endpoint",
        parents=parents,
        help="An API integration's URL and integration token, with a curl example.",
        description=(
            "Print the endpoint URL of an API integration and issue its integration token (shown once). "
            "--rotate issues a new token; the previous one stops working at once."
        ),
    )
    endpoint.add_argument("name", help="the API integration's name")
    endpoint.add_argument(
        "--rotate", action="store_true", help="issue a new integration token (the old one stops working)"
    )
    endpoint.add_argument(
        "--url", help=f"the API's public base URL (default ${URL_ENV} or http://127.0.0.1:{DEFAULT_PORT})"
    )
    endpoint.add_argument(
        "--json", action="store_true", help='print {"url", "integration_token"} for scripts'
    )
    endpoint.set_defaults(func=cmd_endpoint)
