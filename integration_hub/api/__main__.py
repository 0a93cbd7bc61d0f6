"""`python -m integration_hub.api [--catalog PATH] api|tokens|endpoint ...`: the API commands on their own.

The same commands as `integration-hub api|tokens|endpoint`; useful where only this package's
part of the command line is wanted (tests, benchmarks, a container running just the API).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .cli import register


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m integration_hub.api", description=__doc__)
    parser.add_argument(
        "--catalog",
        metavar="PATH",
        help="the catalog file (default: $INTEGRATION_HUB_CATALOG or ./integrations.yaml)",
    )
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
