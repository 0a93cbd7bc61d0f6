"""`integration-hub check` and `run --dry-run` for API integrations (hooks of the command line).

To wire them, `integration_hub/cli/hooks.py` maps:
    ("check", "api"): "integration_hub.api.check:check_api_integration",
    ("dry_run", "api"): "integration_hub.api.check:dry_run_api_integration",
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..core.catalog import ApiIntegration, Catalog
from .batches import batch_store, batch_time
from .tokens import token_store


@dataclass
class CheckOutcome:
    name: str
    ok: bool
    message: str


def check_api_integration(catalog: Catalog, integration: ApiIntegration) -> list[CheckOutcome]:
    """The landing store is writable and the integration has a token; how much is waiting."""
    store = batch_store(catalog)
    try:
        store.probe_write()
    except OSError as exc:
        return [CheckOutcome(integration.name, False, str(exc.strerror))]
    with token_store(catalog) as tokens:
        issued = tokens.integration_token_issued(integration.name)
    if issued is None:
        return [
            CheckOutcome(
                integration.name,
                False,
                f"no integration token yet: issue one with integration-hub endpoint {integration.name}",
            )
        ]
    pending = store.pending_batch_ids(integration.name)
    waiting = f"{len(pending)} batch(es) waiting to be applied" if pending else "no batch waiting"
    if pending:
        waiting += f" (oldest accepted {batch_time(pending[0]).strftime('%Y-%m-%d %H:%M:%S')} UTC)"
    return [
        CheckOutcome(
            integration.name, True, f"landing {store.description} is writable; token issued {issued}; {waiting}"
        )
    ]


def dry_run_api_integration(catalog: Catalog, integration: ApiIntegration, args: argparse.Namespace) -> int:
    """What a run would apply; changes nothing."""
    store = batch_store(catalog)
    pending = store.pending_batch_ids(integration.name)
    if not pending:
        print(f"{integration.name}: no pending batches in {store.location(integration.name)}")
        return 0
    for batch_id in pending:
        status = store.accepted_status(integration.name, batch_id)
        print(f"would apply {batch_id}: {status.get('accepted', '?')} record(s) accepted")
    return 0
