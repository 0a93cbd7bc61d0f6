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
