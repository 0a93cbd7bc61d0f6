"""The catalog: `integrations.yaml`, validated with pydantic.

Every problem in a catalog is reported at once, each as one line saying what is wrong,
where (the connection/integration/report by name and the field) and how to fix it.
Nothing runs on an invalid catalog.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

PropertyType = Literal["string", "number", "boolean", "date", "datetime"]
PROPERTY_TYPES: tuple[str, ...] = ("string", "number", "boolean", "date", "datetime")

# Names become DuckDB tables/columns and Dagster asset keys, so they are plain identifiers.
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
RESERVED_COLUMNS = {"user_id", "_updated_at", "_source"}
DEFAULT_MAX_FILE_BYTES = 1024**3
DEFAULT_MAX_LINE_BYTES = 2 * 1024**2  # one CSV row (all its cells); DuckDB's reader default is 2 MB
MAX_LINE_BYTES_LIMIT = 32 * 1024**2  # DuckDB holds a few read buffers of 4x this per thread
CATALOG_ENV = "INTEGRATION_HUB_CATALOG"


class CatalogError(Exception):
    """An invalid catalog: one message per problem."""

    def __init__(self, problems: list[str], path: Path | None = None) -> None:
        self.problems = problems
        self.path = path
        where = f" {path}" if path else ""
        super().__init__(
            f"invalid catalog{where} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------- connections


class _NetworkLimits(_Model):
    """How long a storage client waits and how often it retries (core/timeouts.py applies them)."""

    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)  # to open a connection
    read_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)  # for the next bytes of an answer
    max_retries: int = Field(default=2, ge=0, le=10)  # per call, after the first attempt


class S3Connection(_NetworkLimits):
    """An S3 bucket (or any S3-compatible store through `endpoint_url`)."""

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["s3"]
    bucket: str = Field(min_length=3)
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None

    @field_validator("prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        return value.strip("/")


class LocalConnection(_Model):
    """A folder on this machine: the embedded default landing area."""

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["local"]
    path: str


class SalesforceConnection(_Model):
    """A Salesforce org, reached with OAuth 2.0 (authorization code + PKCE, or JWT bearer)."""

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["salesforce"]
    environment: Literal["sandbox", "production"] = "production"
    instance_url: str | None = None
    login_url: str | None = None  # My Domain login host; else login/test.salesforce.com
    auth: Literal["oauth", "jwt"] = "oauth"
    client_id: str | None = None
    client_secret: SecretStr | None = None
    username: str | None = None  # JWT bearer: the Salesforce user the server acts as
    private_key_file: str | None = None  # JWT bearer: the connected app's private key (PEM)
    api_version: str = "62.0"
    timeout_seconds: float = Field(default=60.0, gt=0)  # read timeout of each call
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    callback_port: int = Field(default=1717, ge=1, le=65535)
    # A PEM file of CAs to trust for this org only (TLS-inspecting proxies, the test fake);
    # passed on every request, so REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE cannot override it.
    ca_bundle: str | None = None
    max_retries: int = Field(default=5, ge=0, le=20)  # per call: 5xx, timeouts, limits, row locks
    retry_backoff_seconds: float = Field(default=2.0, ge=0, le=300)  # first wait; doubles each retry


class AzureBlobConnection(_NetworkLimits):
    """An Azure Blob Storage container."""

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["azure_blob"]
    container: str = Field(min_length=3)
    prefix: str = ""
    account_url: str | None = None
    connection_string: SecretStr | None = None
    credential: SecretStr | None = None  # account key or SAS token, with account_url

    @field_validator("prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        return value.strip("/")


Connection = Annotated[
    S3Connection | LocalConnection | SalesforceConnection | AzureBlobConnection,
    Field(discriminator="type"),
]

# ---------------------------------------------------------------------------- integrations


class CsvProperty(_Model):
    """A CSV column imported as an attribute."""

    column: str = Field(min_length=1)
    name: str = Field(pattern=NAME_PATTERN)
    type: PropertyType = "string"


class ApiProperty(_Model):
    """A payload property of the End User Update API imported as an attribute."""

    property: str = Field(min_length=1)
    name: str = Field(pattern=NAME_PATTERN)
    type: PropertyType = "string"


class _IntegrationBase(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    enabled: bool = True


class CsvIntegration(_IntegrationBase):
    """Inbound CSV files from an S3 or local folder."""

    type: Literal["s3_csv"]
    connection: str
    folder: str = Field(min_length=1)
    user_id_column: str = Field(min_length=1)
    properties: list[CsvProperty] = Field(min_length=1)
    schedule: str = "*/15 * * * *"
    sensor_interval_seconds: int = Field(default=30, ge=5, le=3600)
    on_blank: Literal["keep", "clear"] = "keep"
    max_rejected_ratio: float = Field(default=0.1, ge=0, le=1)
    max_file_bytes: int = Field(default=DEFAULT_MAX_FILE_BYTES, gt=0)
    max_line_bytes: int = Field(default=DEFAULT_MAX_LINE_BYTES, ge=64 * 1024, le=MAX_LINE_BYTES_LIMIT)
    delimiter: str | None = None  # None: detected by DuckDB's sniffer
    encoding: Literal["utf-8", "utf-16", "latin-1"] = "utf-8"

    @field_validator("folder")
    @classmethod
    def _normalise_folder(cls, value: str) -> str:
        return value.strip().rstrip("/")

    @property
    def inbound_properties(self) -> list[tuple[str, str, str]]:
        """(source column, attribute name, type) for each mapped column."""
        return [(p.column, p.name, p.type) for p in self.properties]

    @property
    def user_id_source(self) -> str:
        return self.user_id_column


class ApiIntegration(_IntegrationBase):
    """Inbound records from the End User Update API."""

    type: Literal["api"]
    system: str = Field(min_length=1)
    environment: Literal["production", "qa"] = "production"
    user_id_property: str = Field(min_length=1)
    properties: list[ApiProperty] = Field(min_length=1)
    schedule: str | None = None  # landed batches are applied by the sensor; a schedule is a backstop
    sensor_interval_seconds: int = Field(default=10, ge=5, le=3600)
    on_blank: Literal["keep", "clear"] = "keep"

    @property
    def inbound_properties(self) -> list[tuple[str, str, str]]:
        return [(p.property, p.name, p.type) for p in self.properties]

    @property
    def user_id_source(self) -> str:
        return self.user_id_property


class SalesforceField(_Model):
    column: str = Field(min_length=1)
    field: str = Field(min_length=1)


class SalesforceIntegration(_IntegrationBase):
    """Outbound, update-only sync of a report into a Salesforce object."""

    type: Literal["salesforce"]
    connection: str
    report: str
    object: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    report_key: str = Field(min_length=1)
    salesforce_key: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    fields: list[SalesforceField] = Field(min_length=1)
    schedule: str = "0 9 * * *"
    run_after_inbound: bool = False  # also run right after an inbound run refreshes user_profiles
    on_multiple_matches: Literal["skip", "update_all"] = "skip"
    bulk_threshold: int = Field(default=2000, ge=1)


class FileExportIntegration(_IntegrationBase):
    """Outbound CSV files of a report into S3, Azure Blob or a local folder."""

    type: Literal["file_export"]
    connection: str
    report: str
    folder: str = ""
    file_name: str = "{integration}_{timestamp}.csv"
    format: Literal["csv"] = "csv"
    compression: Literal["gzip"] | None = None
    escape_formulas: bool = True
    overwrite: bool = False
    schedule: str = "0 9 * * *"
    run_after_inbound: bool = False  # also run right after an inbound run refreshes user_profiles

    @field_validator("folder")
    @classmethod
    def _normalise_folder(cls, value: str) -> str:
        return value.strip().strip("/")


Integration = Annotated[
    CsvIntegration | ApiIntegration | SalesforceIntegration | FileExportIntegration,
    Field(discriminator="type"),
]
InboundIntegration = CsvIntegration | ApiIntegration


class Report(_Model):
    """A named SQL query over the warehouse, materialized as a DuckDB table."""

    name: str = Field(pattern=NAME_PATTERN)
    sql: str = Field(min_length=1)
    description: str | None = None


# ---------------------------------------------------------------------------- alerts

AlertTrigger = Literal["failed", "partial", "check_failed", "stale", "recovered"]
ALERT_TRIGGERS: tuple[str, ...] = ("failed", "partial", "check_failed", "stale", "recovered")
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
_DURATION_PATTERN = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
DURATION_HINT = "use a whole number and a unit (s, m, h, d), e.g. 30m, 26h, 2d or 1d12h"


def parse_duration(value: Any) -> timedelta:
    """'30m', '26h', '2d', '1d12h' -> timedelta; anything else is a ValueError saying how to write it."""
    if isinstance(value, timedelta):
        return value
    text = str(value).strip().lower().replace(" ", "")
    match = _DURATION_PATTERN.fullmatch(text) if isinstance(value, str) else None
    if not match or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration: {DURATION_HINT}")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    duration = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if duration <= timedelta(0):
        raise ValueError(f"{value!r} must be longer than zero: {DURATION_HINT}")
    return duration


def format_duration(duration: timedelta) -> str:
    """timedelta -> '1d 2h' (the catalog's units, largest first)."""
    seconds = int(duration.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _email_address(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", value.strip()):
        raise ValueError(f"{value!r} is not an email address: write it as name@example.com")
    return value.strip() if isinstance(value, str) else value


def _http_url(value: Any) -> Any:
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(text, str) and not re.match(r"^https?://[^/\s]+", text):
        # The URL itself may be the secret: say what is wrong without repeating it.
        raise ValueError("must be an http:// or https:// URL")
    return value


EmailAddress = Annotated[str, BeforeValidator(_email_address)]


class _DeliveryBase(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)  # connect, and each read
    max_retries: int = Field(default=2, ge=0, le=10)  # after the first attempt, on transient errors
    retry_backoff_seconds: float = Field(default=1.0, ge=0, le=60)  # first wait; doubles each retry


class WebhookDestination(_DeliveryBase):
    """An HTTP endpoint receiving one POST per alert: Slack-compatible or a generic JSON body."""

    type: Literal["webhook"]
    url: Annotated[SecretStr, BeforeValidator(_http_url)]  # a Slack webhook URL is itself the secret
    format: Literal["slack", "json"] = "json"
    headers: dict[str, SecretStr] = Field(default_factory=dict)  # e.g. Authorization: Bearer ${TOKEN}
    ca_bundle: str | None = None  # PEM file of CAs to trust for this endpoint only


class EmailDestination(_DeliveryBase):
    """Mail over SMTP: STARTTLS when the server offers it (required with `starttls: true`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool | None = None  # unset: used when offered; true: required; false: never
    ssl: bool = False  # implicit TLS from the first byte (SMTPS, usually port 465)
    user: str | None = None
    password: SecretStr | None = None
    from_address: EmailAddress = Field(alias="from")
    to: list[EmailAddress] = Field(min_length=1)
    ca_bundle: str | None = None  # PEM file of CAs to trust for this server only


AlertDestination = Annotated[WebhookDestination | EmailDestination, Field(discriminator="type")]


class AlertRule(_Model):
    """Which events of which integrations go to which destinations."""

    when: list[AlertTrigger] = Field(min_length=1)
    integrations: Literal["all"] | list[str] = "all"
    notify: list[str] = Field(min_length=1)
    # A partial run alerts when rows_rejected / rows_read is over this (or a source failed whole).
    partial_rejected_ratio: float = Field(default=0.0, ge=0, le=1)

    def covers(self, integration: str) -> bool:
        return self.integrations == "all" or integration in self.integrations


class Alerts(_Model):
    """The `alerts:` section: destinations, rules and how fresh each integration must stay."""

    dagster_url: Annotated[str, BeforeValidator(_http_url)] = DEFAULT_DAGSTER_URL  # links in alerts
    destinations: list[AlertDestination] = Field(default_factory=list)
    rules: list[AlertRule] = Field(default_factory=list)
    max_staleness: dict[str, Duration] = Field(default_factory=dict)

    def destination(self, name: str) -> WebhookDestination | EmailDestination:
        for destination in self.destinations:
            if destination.name == name:
                return destination
        known = ", ".join(d.name for d in self.destinations) or "none declared"
        raise KeyError(f"no alert destination named {name!r} in the catalog (known: {known})")


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def masked_url(url: str) -> str:
    """A URL with any password replaced by ***, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


class WarehouseSettings(_Model):
    """The attribute store, a DuckLake: a catalog database (metadata and snapshots) + Parquet data.

    Embedded default: a SQLite file and a local folder, made on first use.
    """

    catalog: str = "data/catalog.sqlite"  # a SQLite file, or postgresql://user@host:port/dbname
    data_path: str = "data/lake/"  # a local folder, or s3://bucket/prefix/ (with data_connection)
    data_connection: str | None = None  # the s3 connection whose endpoint and credentials reach data_path
    snapshot_retention_days: int = Field(default=30, ge=1, le=3650)
    maintenance_schedule: str = "0 3 * * *"  # the warehouse_maintenance job, cron, UTC

    @field_validator("catalog", "data_path")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @property
    def on_postgres(self) -> bool:
        """The catalog is a PostgreSQL database (scale-out) rather than a SQLite file."""
        return self.catalog.startswith(POSTGRES_SCHEMES)

    @property
    def data_on_s3(self) -> bool:
        return self.data_path.startswith("s3://")


class S3ApiLanding(_Model):
    """Accepted API batches in an S3 bucket (scale-out): every API replica and run worker sees them."""

    connection: str  # an s3 connection: its bucket, endpoint and credentials
    prefix: str = "api_landing"  # under the connection's own prefix

    @field_validator("prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        return value.strip("/")


class Catalog(_Model):
    """The whole catalog file."""

    warehouse: WarehouseSettings = Field(default_factory=WarehouseSettings)
    # The durable store of accepted API batches: a local folder (the embedded default) or S3.
    landing: str | S3ApiLanding = "data/api_landing"
    max_attributes: int = Field(default=100, ge=1, le=100)
    connections: list[Connection] = Field(default_factory=list)
    integrations: list[Integration] = Field(default_factory=list)
    reports: list[Report] = Field(default_factory=list)
    alerts: Alerts = Field(default_factory=Alerts)
    # Directory relative paths in the file are resolved against (set by the loader).
    base_dir: str = Field(default=".", exclude=True)
    # The environment variables the file names as ${VAR} (set by the loader): their values are
    # masked wherever the hub repeats text that may contain them (alerts).
    env_variables: tuple[str, ...] = Field(default=(), exclude=True)
    # The catalog file this was read from (set by the loader); empty when parsed from a document.
    source_file: str = Field(default="", exclude=True)

    # -- lookups -----------------------------------------------------------------
    def connection(self, name: str) -> Connection:
        for connection in self.connections:
            if connection.name == name:
                return connection
        raise KeyError(name)

    def integration(self, name: str) -> Integration:
        for integration in self.integrations:
            if integration.name == name:
                return integration
        raise KeyError(f"no integration named {name!r} in the catalog")

    def report(self, name: str) -> Report:
        for report in self.reports:
            if report.name == name:
                return report
        raise KeyError(name)

    @property
    def inbound(self) -> list[InboundIntegration]:
        return [i for i in self.integrations if isinstance(i, CsvIntegration | ApiIntegration)]

    def resolve_path(self, value: str) -> Path:
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else Path(self.base_dir) / path

    @field_validator("warehouse", mode="before")
    @classmethod
    def _lake_section(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(
                f"is a single DuckDB file ({value}); the warehouse is now a DuckLake: write "
                "`warehouse: {catalog: data/catalog.sqlite, data_path: data/lake/}` and copy the old file "
                f"in with `integration-hub migrate {value}`"
            )
        return value

    @property
    def warehouse_catalog_path(self) -> Path:
        """The DuckLake's SQLite catalog file (the embedded default; see `warehouse_shown` for any kind)."""
        return self.resolve_path(self.warehouse.catalog)

    @property
    def warehouse_data_path(self) -> Path:
        """Where the DuckLake's Parquet files live when that is a local folder (the embedded default)."""
        return self.resolve_path(self.warehouse.data_path)

    @property
    def warehouse_shown(self) -> str:
        """The warehouse catalog as messages name it: the file, or the PostgreSQL URL without its password."""
        if self.warehouse.on_postgres:
            return masked_url(self.warehouse.catalog)
        return str(self.warehouse_catalog_path)

    @property
    def state_dir(self) -> Path:
        """Local state that belongs with the warehouse (credentials): the SQLite catalog's folder,
        or data/ beside the catalog file when the warehouse catalog is PostgreSQL."""
        if self.warehouse.on_postgres:
            return self.resolve_path("data")
        return self.warehouse_catalog_path.parent

    @property
    def landing_on_s3(self) -> bool:
        return isinstance(self.landing, S3ApiLanding)

    @property
    def landing_path(self) -> Path:
        """The local landing folder; with an S3 landing, the folder that keeps what stays local
        (the API tokens of an embedded warehouse)."""
        if isinstance(self.landing, S3ApiLanding):
            return self.state_dir / "api"
        return self.resolve_path(self.landing)

    @property
    def landing_shown(self) -> str:
        """Where accepted API batches are, as messages name it."""
        if isinstance(self.landing, S3ApiLanding):
            connection = self.connection(self.landing.connection)
            assert isinstance(connection, S3Connection)
            prefix = "/".join(p for p in (connection.prefix, self.landing.prefix) if p)
            return f"s3://{connection.bucket}/{prefix}/" if prefix else f"s3://{connection.bucket}/"
        return f"folder {self.landing_path}"


# ---------------------------------------------------------------------------- loading


_SECTIONS: dict[str, TypeAdapter[Any]] = {
    "connections": TypeAdapter(Connection),
    "integrations": TypeAdapter(Integration),
    "reports": TypeAdapter(Report),
}

_ALERT_ENTRIES: dict[str, TypeAdapter[Any]] = {
    "destinations": TypeAdapter(AlertDestination),
    "rules": TypeAdapter(AlertRule),
}

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class _Unset:
    location: str
    variable: str


def _interpolate(value: Any, location: str, unset: list[_Unset]) -> Any:
    """Replace ${VAR} from the environment; a value that is only an unset ${VAR} becomes absent."""
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            resolved = _interpolate(item, f"{location}.{key}" if location else str(key), unset)
            if resolved is not _ABSENT:
                result[key] = resolved
        return result
    if isinstance(value, list):
        return [_interpolate(item, f"{location}[{i}]", unset) for i, item in enumerate(value)]
    if isinstance(value, str):
        whole = _ENV_PATTERN.fullmatch(value.strip())
        if whole and whole.group(1) not in os.environ:
            unset.append(_Unset(location, whole.group(1)))
            return _ABSENT

        def replace(match: re.Match[str]) -> str:
            if match.group(1) not in os.environ:
                unset.append(_Unset(location, match.group(1)))
                return ""
            return os.environ[match.group(1)]

        return _ENV_PATTERN.sub(replace, value)
    return value


_ABSENT = object()


def _env_names(value: Any) -> set[str]:
    """Every ${VAR} a raw document names."""
    if isinstance(value, dict):
        return set().union(*(_env_names(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_env_names(v) for v in value))
    return set(_ENV_PATTERN.findall(value)) if isinstance(value, str) else set()


def default_catalog_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`--catalog`, else $INTEGRATION_HUB_CATALOG, else ./integrations.yaml."""
    return Path(explicit or os.environ.get(CATALOG_ENV) or "integrations.yaml")


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Read, interpolate and validate a catalog file; raise CatalogError listing every problem."""
    catalog_path = default_catalog_path(path)
    if not catalog_path.exists():
        raise CatalogError(
            [
                f"catalog file {catalog_path} does not exist: create it (see docs/catalog.md), "
                f"pass --catalog PATH, or set ${CATALOG_ENV}"
            ]
        )
    try:
        raw = yaml.safe_load(catalog_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CatalogError(
            [f"{catalog_path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}"], catalog_path
        ) from None
    return parse_catalog(raw, base_dir=catalog_path.resolve().parent, path=catalog_path)


def parse_catalog(raw: Any, base_dir: str | os.PathLike[str] = ".", path: Path | None = None) -> Catalog:
    """Validate an already-parsed catalog document."""
    if not isinstance(raw, dict):
        raise CatalogError(["the catalog must be a YAML mapping with connections/integrations/reports"], path)
    unset: list[_Unset] = []
    document = _interpolate(raw, "", unset)
    document["base_dir"] = str(base_dir)
    problems: list[str] = []
    # Each entry is validated on its own, so the cross-entry rules still see every valid entry
    # and all problems are reported in one go.
    valid: dict[str, list[Any]] = {}
    invalid_names: set[str] = set()
    for section, adapter in _SECTIONS.items():
        entries = document.get(section) or []
        if not isinstance(entries, list):
            problems.append(f"field {section!r} must be a list of entries")
            entries = []
        valid[section] = []
        for index, entry in enumerate(entries):
            try:
                valid[section].append(adapter.validate_python(entry))
            except ValidationError as exc:
                problems += _pydantic_problems(exc, document, unset, prefix=(section, index))
                if isinstance(entry, dict) and "name" in entry:
                    invalid_names.add(str(entry["name"]))
    parsed_alerts = _validate_alerts(document.get("alerts"), document, unset)
    alerts = parsed_alerts.alerts
    problems += parsed_alerts.problems
    env_variables = tuple(sorted(_env_names(raw)))
    top = {k: v for k, v in document.items() if k not in _SECTIONS and k != "alerts"}
    try:
        catalog = Catalog.model_validate({**top, **valid, "alerts": alerts, "env_variables": env_variables})
    except ValidationError as exc:
        problems += _pydantic_problems(exc, document, unset)
        catalog = Catalog.model_validate(
            {"base_dir": str(base_dir), **valid, "alerts": alerts, "env_variables": env_variables}
        )
    problems += [
        p for p in semantic_problems(catalog) if not any(f"unknown connection {n!r}" in p or f"unknown report {n!r}" in p for n in invalid_names)
    ]
    problems += [
        p
        for p in alert_problems(catalog, parsed_alerts.rule_numbers, parsed_alerts.invalid_destinations)
        if not any(f"unknown integration {n!r}" in p for n in invalid_names)
    ]
    if problems:
        raise CatalogError(problems, path)
    if path is not None:
        catalog = catalog.model_copy(update={"source_file": str(Path(path).resolve())})
    return catalog


@dataclass
class _AlertsParsed:
    alerts: Alerts
    problems: list[str]
    invalid_destinations: set[str]
    rule_numbers: list[int]  # each valid rule's position in the file, 1-based


def _validate_alerts(raw: Any, document: dict[str, Any], unset: list[_Unset]) -> _AlertsParsed:
    """The alerts section, entry by entry, so one bad entry does not hide the others' problems."""
    if raw is None:
        return _AlertsParsed(Alerts(), [], set(), [])
    if not isinstance(raw, dict):
        problem = "field 'alerts' must be a mapping of destinations, rules and max_staleness (see docs/operations.md)"
        return _AlertsParsed(Alerts(), [problem], set(), [])
    problems: list[str] = []
    invalid: set[str] = set()
    rule_numbers: list[int] = []
    entries: dict[str, list[Any]] = {}
    for key, adapter in _ALERT_ENTRIES.items():
        items = raw.get(key) or []
        if not isinstance(items, list):
            problems.append(f"alerts field {key!r} must be a list of entries")
            items = []
        entries[key] = []
        for index, item in enumerate(items):
            try:
                entry = adapter.validate_python(item)
            except ValidationError as exc:
                problems += _pydantic_problems(exc, document, unset, prefix=("alerts", key, index))
                if key == "destinations" and isinstance(item, dict) and "name" in item:
                    invalid.add(str(item["name"]))
                continue
            if isinstance(entry, EmailDestination) and entry.user and entry.password is None:
                variable = next((u.variable for u in unset if u.location == f"alerts.destinations[{index}].password"), None)
                fix = f"set the environment variable {variable}" if variable else "add password: ${SMTP_PASSWORD}"
                problems.append(f"alerts destination {entry.name!r} field 'password' is needed with 'user': {fix}")
                invalid.add(entry.name)
                continue
            entries[key].append(entry)
            if key == "rules":
                rule_numbers.append(index + 1)
    staleness: dict[str, timedelta] = {}
    raw_staleness = raw.get("max_staleness") or {}
    if not isinstance(raw_staleness, dict):
        problems.append("alerts field 'max_staleness' must map integration names to durations, e.g. {crm: 26h}")
    else:
        for name, value in raw_staleness.items():
            try:
                staleness[str(name)] = parse_duration(value)
            except ValueError as exc:
                problems.append(f"alerts field 'max_staleness' for integration {name!r}: {exc}")
    rest = {k: v for k, v in raw.items() if k not in (*_ALERT_ENTRIES, "max_staleness")}
    try:
        alerts = Alerts.model_validate({**rest, **entries, "max_staleness": staleness})
    except ValidationError as exc:
        problems += _pydantic_problems(exc, document, unset, prefix=("alerts",))
        alerts = Alerts.model_validate({**entries, "max_staleness": staleness})
    return _AlertsParsed(alerts, problems, invalid, rule_numbers)


def _describe_location(loc: Iterable[Any], document: dict[str, Any]) -> str:
    """Turn ('integrations', 0, 's3_csv', 'schedule') into "integration 'crm' field 'schedule'"."""
    parts = list(loc)
    if len(parts) >= 3 and parts[0] == "alerts" and parts[1] in _ALERT_ENTRIES and isinstance(parts[2], int):
        section, index = parts[1], parts[2]
        alerts = document.get("alerts") or {}
        entries = alerts.get(section) or []
        entry = entries[index] if index < len(entries) and isinstance(entries[index], dict) else {}
        label = (
            f"alerts destination {entry.get('name', f'#{index + 1}')!r}"
            if section == "destinations"
            else f"alerts rule #{index + 1}"
        )
        rest = [p for p in parts[3:] if p not in ("webhook", "email", "list[str]", "literal['all']")]
        field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in rest).replace(".[", "[")
        return f"{label} field {field!r}" if field else label
    if parts and parts[0] == "alerts":
        field = ".".join(str(p) for p in parts[1:])
        return f"alerts field {field!r}" if field else "field 'alerts'"
    if len(parts) >= 2 and parts[0] in ("connections", "integrations", "reports") and isinstance(parts[1], int):
        section, index = parts[0], parts[1]
        entries = document.get(section) or []
        entry = entries[index] if index < len(entries) and isinstance(entries[index], dict) else {}
        label = f"{section[:-1]} {entry.get('name', f'#{index + 1}')!r}"
        rest = [p for p in parts[2:] if p not in ("s3", "local", "salesforce", "azure_blob", "s3_csv", "api", "file_export")]
        field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in rest).replace(".[", "[")
        return f"{label} field {field!r}" if field else label
    field = ".".join(str(p) for p in parts)
    return f"field {field!r}" if field else "the catalog"


def _pydantic_problems(
    exc: ValidationError, document: dict[str, Any], unset: list[_Unset], prefix: tuple[Any, ...] = ()
) -> list[str]:
    problems = []
    for error in exc.errors():
        where = _describe_location((*prefix, *error["loc"]), document)
        message = error["msg"]
        hint = ""
        if error["type"] == "missing":
            dotted = ".".join(str(p) for p in (*prefix, *error["loc"]))
            env = [u.variable for u in unset if dotted.endswith(u.location.split(".")[-1])]
            hint = f": set the environment variable {env[0]}" if env else ": add it"
        elif error["type"] == "extra_forbidden":
            message = "is not a known field"
            hint = ": remove it or check its spelling (see docs/catalog.md)"
        elif error["type"] == "literal_error":
            hint = f" (got {error.get('input')!r})"
        elif error["type"] == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == NAME_PATTERN:
            message = "must be lower-case letters, digits and underscores, starting with a letter"
            hint = f" (got {error.get('input')!r})"
        elif error["type"] == "value_error":
            message = str(error.get("ctx", {}).get("error", message))
        elif error["type"] == "union_tag_invalid":
            message = "has an unknown type"
            hint = f" (got {error.get('input', {}).get('type') if isinstance(error.get('input'), dict) else error.get('input')!r}): {error.get('ctx', {}).get('expected_tags', '')}"
        elif error["type"] == "union_tag_not_found":
            message = "needs a `type`"
            hint = f": one of {error.get('ctx', {}).get('expected_tags', '')}"
        problems.append(f"{where} {message}{hint}")
    return problems


def _folder_problem(folder: str) -> str | None:
    normalised = posixpath.normpath(folder)
    if folder.startswith("/") or normalised.startswith("..") or normalised in (".", ""):
        return "must be a sub-folder inside the connection's prefix/path (no leading '/', no '..')"
    if normalised.split("/")[-1] in ("success", "failed"):
        return "must not end in 'success' or 'failed': those sub-folders hold processed files"
    return None


def _folder_identity(catalog: Catalog, connection: Connection, folder: str) -> tuple[str, ...] | None:
    """Where a folder really is, so two integrations can be compared across connections."""
    if isinstance(connection, S3Connection):
        full = posixpath.normpath(posixpath.join(connection.prefix, folder))
        return ("s3", connection.endpoint_url or "", connection.bucket, *full.split("/"))
    if isinstance(connection, LocalConnection):
        full = (catalog.resolve_path(connection.path) / folder).resolve()
        return ("local", *full.parts)
    return None


def warehouse_problems(warehouse: WarehouseSettings, connections: dict[str, Connection]) -> Iterable[str]:
    """The `warehouse:` section's rules: a PostgreSQL catalog is shared by machines, so is its data."""
    if warehouse.on_postgres:
        url = urlsplit(warehouse.catalog)
        try:
            url.port  # noqa: B018 - parsing it raises on a port that is not a number
            valid = bool(url.hostname) and bool(url.path.strip("/"))
        except ValueError:
            valid = False
        if not valid:
            yield (
                f"warehouse field 'catalog' {masked_url(warehouse.catalog)!r} is not a PostgreSQL URL with a host and "
                "a database: write postgresql://USER@HOST:5432/DBNAME (the password from ${VARIABLE} or PGPASSWORD)"
            )
        if not warehouse.data_on_s3:
            yield (
                f"warehouse field 'data_path' {warehouse.data_path!r} is a local folder, but the catalog is "
                "PostgreSQL, which other machines share: set data_path to s3://BUCKET/PREFIX/ and data_connection "
                "to an s3 connection"
            )
    if warehouse.data_on_s3:
        name = warehouse.data_connection
        connection = connections.get(name) if name else None
        if not isinstance(connection, S3Connection):
            what = f"names {name!r}, which is not an s3 connection" if name else "is not set"
            yield (
                f"warehouse field 'data_connection' {what}: an s3:// data_path needs the name of an s3 "
                "connection, whose endpoint and credentials reach it"
            )
        elif urlsplit(warehouse.data_path).netloc != connection.bucket:
            yield (
                f"warehouse field 'data_path' {warehouse.data_path!r} is not in the bucket of its data_connection "
                f"{name!r} ({connection.bucket}): use s3://{connection.bucket}/PREFIX/ or another connection"
            )
    elif warehouse.data_connection:
        yield (
            f"warehouse field 'data_connection' is set, but data_path {warehouse.data_path!r} is a local folder: "
            "remove data_connection, or set data_path to s3://BUCKET/PREFIX/"
        )


# Five fields of `*`, `*/step` or one number each, in range: a cron expression Dagster accepts,
# told without importing Dagster (a second of a command's start).
_PLAIN_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))  # minute, hour, day, month, weekday
_PLAIN_CRON_FIELD = re.compile(r"\*|(\*/)?(0|[1-9]\d*)")


def _plain_cron_field(field: str, lowest: int, highest: int) -> bool:
    found = _PLAIN_CRON_FIELD.fullmatch(field)
    if found is None:
        return False
    if found.group(2) is None:  # `*`
        return True
    return (1 if found.group(1) else lowest) <= int(found.group(2)) <= highest  # a step is at least 1


def is_valid_cron_string(cron: str) -> bool:
    """Whether Dagster accepts `cron` as a schedule: the common plain forms are told here, any other by Dagster."""
    fields = cron.split(" ")
    if (
        len(fields) == len(_PLAIN_CRON_RANGES)
        and all(_plain_cron_field(f, *bounds) for f, bounds in zip(fields, _PLAIN_CRON_RANGES, strict=True))
        and not (fields[3] == "2" and fields[2] in ("30", "31"))  # Dagster refuses February's 30th and 31st
    ):
        return True
    # dagster exports no cron validator; dg.ScheduleDefinition runs this one but needs a job, raises, warns.
    from dagster._utils.schedules import is_valid_cron_string as dagster_accepts

    return dagster_accepts(cron)


def semantic_problems(catalog: Catalog) -> Iterable[str]:
    """Cross-entry rules pydantic cannot see."""
    for section, entries in (
        ("connection", catalog.connections),
        ("integration", catalog.integrations),
        ("report", catalog.reports),
    ):
        for name, count in Counter(e.name for e in entries).items():
            if count > 1:
                yield f"{section} {name!r} is declared {count} times: names must be unique; rename one"

    if not is_valid_cron_string(catalog.warehouse.maintenance_schedule):
        yield (
            f"warehouse field 'maintenance_schedule' {catalog.warehouse.maintenance_schedule!r} is not a valid "
            "cron expression: use five fields, minute hour day month weekday, e.g. '0 3 * * *' (UTC)"
        )

    connections = {c.name: c for c in catalog.connections}
    yield from warehouse_problems(catalog.warehouse, connections)
    if isinstance(catalog.landing, S3ApiLanding):
        name = catalog.landing.connection
        if not isinstance(connections.get(name), S3Connection):
            what = "is not an s3 connection" if name in connections else "is not a connection in this catalog"
            yield (
                f"landing field 'connection' {name!r} {what}: API batches land in S3 through an s3 connection; "
                "name one, or write `landing: data/api_landing` for a local folder"
            )
    reports = {r.name for r in catalog.reports}
    folders: list[tuple[tuple[str, ...], str]] = []
    property_owner: dict[str, str] = {}
    total_properties = 0

    for integration in catalog.integrations:
        where = f"integration {integration.name!r}"
        schedule = getattr(integration, "schedule", None)
        if schedule is not None and not is_valid_cron_string(schedule):
            yield (
                f"{where} field 'schedule' {schedule!r} is not a valid cron expression: "
                "use five fields, minute hour day month weekday, e.g. '*/15 * * * *' (UTC)"
            )

        wanted = {
            "s3_csv": (S3Connection, LocalConnection),
            "salesforce": (SalesforceConnection,),
            "file_export": (S3Connection, AzureBlobConnection, LocalConnection),
        }.get(integration.type)
        if wanted is not None:
            connection_name = integration.connection  # type: ignore[union-attr]
            connection = connections.get(connection_name)
            if connection is None:
                known = ", ".join(sorted(connections)) or "none declared"
                yield (
                    f"{where} field 'connection' names unknown connection {connection_name!r}: "
                    f"declare it under connections (known: {known})"
                )
            elif not isinstance(connection, wanted):
                kinds = " or ".join(w.model_fields["type"].annotation.__args__[0] for w in wanted)
                yield (
                    f"{where} field 'connection': {connection_name!r} is a {connection.type} connection, "
                    f"but a {integration.type} integration needs a {kinds} connection"
                )
            elif isinstance(integration, CsvIntegration):
                problem = _folder_problem(integration.folder)
                if problem:
                    yield f"{where} field 'folder' {integration.folder!r} {problem}"
                else:
                    identity = _folder_identity(catalog, connection, integration.folder)
                    if identity:
                        folders.append((identity, integration.name))

        if isinstance(integration, SalesforceIntegration | FileExportIntegration):
            if integration.report not in reports:
                known = ", ".join(sorted(reports)) or "none declared"
                yield (
                    f"{where} field 'report' names unknown report {integration.report!r}: "
                    f"declare it under reports (known: {known})"
                )
        if isinstance(integration, SalesforceIntegration):
            for field, count in Counter(f.field.lower() for f in integration.fields).items():
                if count > 1:
                    yield f"{where} field 'fields' maps Salesforce field {field!r} {count} times: map it once"
            if integration.salesforce_key.lower() in {f.field.lower() for f in integration.fields}:
                yield (
                    f"{where} field 'fields' maps the key field {integration.salesforce_key!r}: "
                    "the key only matches records, remove it from fields"
                )
        if isinstance(integration, FileExportIntegration):
            try:
                integration.file_name.format(date="d", timestamp="t", integration="i")
            except (KeyError, IndexError, ValueError) as exc:
                yield (
                    f"{where} field 'file_name' {integration.file_name!r} has an unknown placeholder "
                    f"({exc}): use only {{date}}, {{timestamp}} and {{integration}}"
                )

        if isinstance(integration, CsvIntegration | ApiIntegration):
            sources = Counter(source for source, _, _ in integration.inbound_properties)
            for source, count in sources.items():
                if count > 1:
                    yield f"{where} maps source column {source!r} {count} times: map each column once"
            for _, name, _ in integration.inbound_properties:
                total_properties += 1
                if name in RESERVED_COLUMNS:
                    yield f"{where} property name {name!r} is reserved: choose another name"
                elif name in property_owner:
                    other = property_owner[name]
                    yield (
                        f"{where} property name {name!r} is already used by integration {other!r}: "
                        "property names are unique across all inbound integrations; rename one"
                    )
                else:
                    property_owner[name] = integration.name

    for i, (identity, name) in enumerate(folders):
        for other_identity, other_name in folders[i + 1 :]:
            shorter = min(len(identity), len(other_identity))
            if identity[:shorter] == other_identity[:shorter]:
                yield (
                    f"integrations {name!r} and {other_name!r} read overlapping folders: a file must "
                    "belong to exactly one integration; give each its own folder, not nested"
                )

    if total_properties > catalog.max_attributes:
        yield (
            f"inbound integrations declare {total_properties} properties in total, over max_attributes "
            f"({catalog.max_attributes}): remove properties or raise max_attributes (at most 100)"
        )



def alert_problems(
    catalog: Catalog, rule_numbers: list[int] | None = None, invalid_destinations: Iterable[str] = ()
) -> Iterable[str]:
    """Cross-references of the alerts section: destinations, integrations, staleness.

    `rule_numbers` are the rules' positions in the file and `invalid_destinations` the names of
    destinations with problems of their own (both are left out of the catalog).
    """
    alerts = catalog.alerts
    for name, count in Counter(d.name for d in alerts.destinations).items():
        if count > 1:
            yield f"alerts destination {name!r} is declared {count} times: names must be unique; rename one"
    integrations = {i.name for i in catalog.integrations}
    known_integrations = ", ".join(sorted(integrations)) or "none declared"
    destinations = {d.name for d in alerts.destinations} | set(invalid_destinations)
    known_destinations = ", ".join(sorted(destinations)) or "none declared"
    numbers = rule_numbers or list(range(1, len(alerts.rules) + 1))
    for number, rule in zip(numbers, alerts.rules, strict=True):
        where = f"alerts rule #{number}"
        for name in rule.notify:
            if name not in destinations:
                yield (
                    f"{where} field 'notify' names unknown destination {name!r}: declare it under "
                    f"alerts.destinations (known: {known_destinations})"
                )
        covered = integrations if rule.integrations == "all" else set(rule.integrations)
        if rule.integrations != "all":
            for name in rule.integrations:
                if name not in integrations:
                    yield (
                        f"{where} field 'integrations' names unknown integration {name!r}: use 'all' or "
                        f"integrations declared in the catalog (known: {known_integrations})"
                    )
        if "stale" in rule.when and not covered & set(alerts.max_staleness):
            yield (
                f"{where} alerts on 'stale', but none of its integrations has a max_staleness: add e.g. "
                f"max_staleness: {{{next(iter(sorted(covered)), 'crm')}: 26h}} under alerts"
            )
        if rule.when == ["recovered"]:
            yield (
                f"{where} alerts only on 'recovered': a recovery is sent for a problem the same rule alerts "
                "on; add failed, partial, check_failed or stale to its when"
            )
    for name in alerts.max_staleness:
        if name not in integrations:
            yield (
                f"alerts field 'max_staleness' names unknown integration {name!r}: use integrations declared "
                f"in the catalog (known: {known_integrations})"
            )
