"""Connect and read timeouts and bounded retries for the storage clients (S3, Azure Blob).

A connection's `connect_timeout_seconds`, `read_timeout_seconds` and `max_retries` (catalog)
bound every call: an unreachable or silent endpoint fails one call after at most
`(max_retries + 1) x timeout + backoff`, never after the SDKs' own much longer defaults
(Azure's retry policy alone waited about a minute and a half). The Salesforce client applies its
connection's `connect_timeout_seconds` / `timeout_seconds` / `max_retries` itself
(salesforce/auth.py, salesforce/client.py).

`check` and `run --dry-run` should answer in seconds: `for_check` shortens the limits.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .catalog import AzureBlobConnection, S3Connection

# What `check` allows at most: one retry, a short connect and read timeout.
CHECK_CONNECT_TIMEOUT = 5.0
CHECK_READ_TIMEOUT = 20.0
CHECK_MAX_RETRIES = 1

# Azure waits before retry n (1, 2, ...) about AZURE_INITIAL_BACKOFF + AZURE_BACKOFF_BASE ** n seconds
# (+/- AZURE_JITTER): 3 s, 5 s, 9 s ... instead of the SDK's 15 s + 3 ** n.
AZURE_INITIAL_BACKOFF = 1
AZURE_BACKOFF_BASE = 2
AZURE_JITTER = 1

StorageConnection = TypeVar("StorageConnection", S3Connection, AzureBlobConnection)


def for_check(connection: StorageConnection) -> StorageConnection:
    """The same connection with the short limits of `check` (never longer than its own)."""
    return connection.model_copy(
        update={
            "connect_timeout_seconds": min(connection.connect_timeout_seconds, CHECK_CONNECT_TIMEOUT),
            "read_timeout_seconds": min(connection.read_timeout_seconds, CHECK_READ_TIMEOUT),
            "max_retries": min(connection.max_retries, CHECK_MAX_RETRIES),
        }
    )


def s3_config(connection: S3Connection) -> Any:
    """botocore Config: the connection's timeouts, and `max_retries` retries in standard mode.

    Standard mode retries throttling, 5xx, timeouts and connection errors with exponential
    backoff (random waits of at most 0.05 s, 0.1 s ...; 1 s, 2 s ... when throttled).
    """
    from botocore.config import Config

    return Config(
        connect_timeout=connection.connect_timeout_seconds,
        read_timeout=connection.read_timeout_seconds,
        retries={"mode": "standard", "total_max_attempts": connection.max_retries + 1},
    )


def azure_client_settings(connection: AzureBlobConnection) -> dict[str, Any]:
    """Keyword arguments for an azure-storage-blob client: timeouts and a short exponential retry."""
    from azure.storage.blob import ExponentialRetry

    return {
        "connection_timeout": connection.connect_timeout_seconds,
        "read_timeout": connection.read_timeout_seconds,
        "retry_policy": ExponentialRetry(
            initial_backoff=AZURE_INITIAL_BACKOFF,
            increment_base=AZURE_BACKOFF_BASE,
            retry_total=connection.max_retries,
            random_jitter_range=AZURE_JITTER,
        ),
    }


def limits_text(connection: S3Connection | AzureBlobConnection) -> str:
    """For messages: the limits a call gave up after, e.g. '3 attempts, connect timeout 10 s'."""
    attempts = connection.max_retries + 1
    return (
        f"{attempts} attempt{'s' if attempts != 1 else ''}, connect timeout {connection.connect_timeout_seconds:g} s, "
        f"read timeout {connection.read_timeout_seconds:g} s"
    )
