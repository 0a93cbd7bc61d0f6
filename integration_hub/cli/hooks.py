"""What each integration kind adds to the generic commands (`check`, `run --dry-run`, `logs --run`).

Entries are "module:function", imported only when used, so the command line starts fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..core.catalog import Integration
from .output import CommandError

HOOKS: dict[tuple[str, str], str] = {
    ("check", "s3_csv"): "integration_hub.inbound_csv.check:check_csv_integration",
    ("dry_run", "s3_csv"): "integration_hub.inbound_csv.check:dry_run_csv_integration",
    ("check", "api"): "integration_hub.api.check:check_api_integration",
    ("dry_run", "api"): "integration_hub.api.check:dry_run_api_integration",
    ("check", "file_export"): "integration_hub.exports.check:check_file_export",
    ("dry_run", "file_export"): "integration_hub.exports.check:dry_run_file_export",
    ("run_details", "file_export"): "integration_hub.exports.check:run_details",
    ("check", "salesforce"): "integration_hub.salesforce.check:check_salesforce",
    ("dry_run", "salesforce"): "integration_hub.salesforce.check:dry_run_salesforce",
    ("run_details", "salesforce"): "integration_hub.salesforce.check:run_details",
    ("run_config", "salesforce"): "integration_hub.salesforce.check:run_config",
}

_MISSING = object()


def hook(name: str, integration: Integration, default: Any = _MISSING) -> Callable[..., Any]:
    target = HOOKS.get((name, integration.type))
    if target is None:
        if default is not _MISSING:
            return default
        raise CommandError(f"{name.replace('_', ' ')} is not available for {integration.type} integrations")
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)
