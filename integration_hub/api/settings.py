"""The API server's limits: defaults, and $INTEGRATION_HUB_API_<NAME> for each."""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

MiB = 1024 * 1024
ENV_PREFIX = "INTEGRATION_HUB_API_"


@dataclass(frozen=True)
class ApiSettings:
    """Limits of the server; each also settable as $INTEGRATION_HUB_API_<NAME> (upper case)."""

    max_body_bytes: int = 5 * MiB  # also the limit of a gzip body once decompressed
    max_records: int = 2000
    rate_limit: float = 250.0  # requests per second per bearer token; 0 turns the limit off
    rate_burst: int = 500  # requests a token may send at once before the rate applies
    max_header_bytes: int = 16 * 1024  # the request line and headers together
    header_timeout: float = 10.0  # seconds for the request line and headers to arrive
    body_timeout: float = 10.0  # the longest pause in the middle of a body, in seconds
    # Seconds before another replica takes over an Idempotency-Key whose replica died before its
    # batch landed (S3 landing): longer than a landing can take, else two replicas could land one key.
    claim_timeout: float = 60.0

    @property
    def max_containers(self) -> int:
        """JSON objects and arrays one body may hold: the top level, data and 4 per record."""
        return 2 + 4 * self.max_records

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ApiSettings:
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw:
                values[f.name] = float(raw) if f.type == "float" else int(raw)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        return {ENV_PREFIX + k.upper(): str(v) for k, v in asdict(self).items()}


@functools.cache
def process_settings() -> ApiSettings:
    """The settings of this server process (`serve` puts them in the environment of its workers)."""
    return ApiSettings.from_env()
