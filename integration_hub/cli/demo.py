"""`integration-hub demo`: a sample catalog and files, then the Dagster UI and the API server.

Nothing in the demo needs a cloud account: the landing and export folders are on this machine.
The sensor notices the sample files within seconds; once their run refreshed user_profiles, the
export's sensor writes data/exports/active_users.csv, so the whole lineage (files -> attributes ->
user_profiles -> report -> exported file) has run within about a minute. Both ports are checked
before anything starts, and Ctrl-C stops every process the demo started (each child leads its own
process group, which is stopped whole).
"""

from __future__ import annotations

import argparse
import csv
import errno
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

DEMO_CATALOG = """\
# The demo catalog: CSV files dropped in a local folder, the End User Update API, two reports,
# a CSV export into a local folder, and a Salesforce sync that waits for your org (disabled).
warehouse:                             # a DuckLake: a SQLite catalog and a folder of Parquet files
  catalog: data/catalog.sqlite
  data_path: data/lake/
landing: data/api_landing
max_attributes: 100

connections:
  - name: drop_folder
    type: local
    path: data/landing
  - name: export_folder
    type: local                        # exports also go to s3 and azure_blob connections
    path: data/exports
  # To sync into Salesforce: fill in your connected app's Consumer Key (and Secret, if the app
  # requires one) through the environment, export INTEGRATION_HUB_SECRET_KEY, run
  # `integration-hub salesforce connect sf_sandbox`, then set `enabled: true` on
  # onboarding_to_salesforce below (see docs/salesforce.md).
  - name: sf_sandbox
    type: salesforce
    environment: sandbox               # or production
    client_id: ${SF_CLIENT_ID}
    client_secret: ${SF_CLIENT_SECRET}

integrations:
  - name: crm
    type: s3_csv
    connection: drop_folder
    folder: crm
    user_id_column: email
    sensor_interval_seconds: 5
    properties:
      - {column: "Plan Tier", name: plan, type: string}
      - {column: tickets_opened, name: support_tickets, type: number}
      - {column: is_active, name: active, type: boolean}
      - {column: signup, name: signup_date, type: date}
    schedule: "*/15 * * * *"

  - name: realtime_enrichment
    type: api
    system: main_site
    environment: production
    user_id_property: userId
    sensor_interval_seconds: 5
    properties:
      - {property: onboardingPct, name: onboarding_pct, type: number}
      - {property: lastSeen, name: last_seen_at, type: datetime}

  - name: active_users_export
    type: file_export
    connection: export_folder
    report: active_users
    file_name: active_users.csv        # data/exports/active_users.csv
    overwrite: true
    schedule: "0 * * * *"              # hourly (UTC)
    run_after_inbound: true            # and right after each inbound run that applied data

  - name: onboarding_to_salesforce
    type: salesforce
    enabled: false                     # fill in the sf_sandbox connection above first
    connection: sf_sandbox
    report: onboarding_progress
    object: Contact
    report_key: email
    salesforce_key: Email
    fields:
      - {column: onboarding_pct, field: WalkMe_Onboarding_Pct__c}

reports:
  - name: active_users
    sql: SELECT user_id AS email, plan, support_tickets FROM user_profiles WHERE active ORDER BY user_id
  - name: onboarding_progress
    sql: SELECT user_id AS email, onboarding_pct FROM user_profiles WHERE onboarding_pct IS NOT NULL
"""

DEMO_BEARER = "demo"  # the bearer token the demo issues for its own API server
DEMO_ENV_FILE = "demo.env"
STOP_GRACE_SECONDS = 10  # after Ctrl-C, how long dagster dev and the API get to stop before SIGKILL

WORKSPACE = """\
load_from:
  - python_module:
      module_name: integration_hub.definitions
      location_name: integration_hub
"""

PLANS = ["free", "starter", "pro", "enterprise"]


def write_sample_files(landing: Path, users: int = 500, seed: int = 7) -> list[Path]:
    """Two good exports (the second updates the first) and one with a few bad rows."""
    rng = random.Random(seed)
    folder = landing / "crm"
    folder.mkdir(parents=True, exist_ok=True)
    header = ["email", "Plan Tier", "tickets_opened", "is_active", "signup", "internal_note"]
    start = date(2024, 1, 1)

    def row(n: int) -> list[str]:
        return [
            f"user{n:04d}@example.com",
            rng.choice(PLANS),
            str(rng.randint(0, 40)),
            rng.choice(["true", "false", "yes", "no"]),
            (start + timedelta(days=rng.randint(0, 600))).isoformat(),
            "not imported",
        ]

    files = []
    for name, rows in (
        ("2024-06-01_users.csv", [row(n) for n in range(users)]),
        ("2024-06-02_users_update.csv", [row(n) for n in range(0, users, 5)]),
    ):
        path = folder / name
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        files.append(path)
    bad = folder / "2024-06-03_users_with_errors.csv"
    with open(bad, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([row(n) for n in range(users, users + 40)])
        writer.writerow(["broken@example.com", "pro", "many", "maybe", "2024-13-45", ""])
    files.append(bad)
    # Older files first: the sensor applies them in this order, so the update wins.
    for offset, path in enumerate(files):
        os.utime(path, (1_717_200_000 + offset * 60, 1_717_200_000 + offset * 60))
    return files


def write_demo(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    catalog = directory / "integrations.yaml"
    if not catalog.exists():
        catalog.write_text(DEMO_CATALOG)
    (directory / "workspace.yaml").write_text(WORKSPACE)
    landing = directory / "data" / "landing"
    if not (landing / "crm").exists() or not any((landing / "crm").glob("*.csv")) and not (landing / "crm" / "success").exists():
        write_sample_files(landing)
    return catalog


def port_problem(port: int, setting: str, what: str) -> str | None:
    """None when 127.0.0.1:port can be bound now, else the one-line reason and the setting to change."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
            return (
                f"port {port} for the {what} {reason}: stop what uses it, or choose another port with "
                f"`make demo {setting}=<port>` (integration-hub demo --{setting.lower().replace('_', '-')} <port>)"
            )
    return None


def issue_demo_tokens(catalog_path: Path, env_file: Path, api_url: str) -> bool:
    """A bearer token and each API integration's token, issued once and kept in `env_file` (mode 600).

    Returns True when they were issued now. The tokens are never printed: `source` the file.
    """
    from ..api.tokens import token_store
    from ..core.catalog import ApiIntegration, load_catalog

    catalog = load_catalog(catalog_path)
    lines = [] if env_file.exists() else [
        "# Written by `integration-hub demo` when it issues the demo's API credentials (`source` this file).",
        f"export INTEGRATION_HUB_API_URL={api_url}",
    ]
    issued = False
    with token_store(catalog) as tokens:
        if not any(t.name == DEMO_BEARER for t in tokens.list_bearers() if t.active):
            lines.append(f"export INTEGRATION_HUB_TOKEN={tokens.create_bearer(DEMO_BEARER)}")
            issued = True
        for integration in catalog.integrations:
            if isinstance(integration, ApiIntegration) and tokens.integration_token_issued(integration.name) is None:
                variable = f"{integration.name.upper()}_INTEGRATION_TOKEN"
                lines.append(f"export {variable}={tokens.issue_integration_token(integration.name)}")
                issued = True
    if issued:
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # earlier tokens stay
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
    return issued


def cmd_demo(args: argparse.Namespace) -> int:
    from .output import CommandError

    directory = Path(args.dir).resolve()
    if not args.no_ui:
        # Before anything starts: a taken port stops the demo at once, naming the setting to change.
        for port, setting, what in ((args.port, "PORT", "Dagster UI"), (args.api_port, "API_PORT", "API server")):
            problem = port_problem(port, setting, what)
            if problem:
                raise CommandError(problem)
        if args.port == args.api_port:
            raise CommandError(f"the Dagster UI and the API server cannot share port {args.port}: set API_PORT to another")
    catalog = write_demo(directory)
    api_url = f"http://127.0.0.1:{args.api_port}"
    env = dict(os.environ)
    env.update({
        "INTEGRATION_HUB_CATALOG": str(catalog),
        "DAGSTER_HOME": str(directory / ".dagster_home"),
        "INTEGRATION_HUB_API_URL": api_url,
    })
    os.environ.update({k: env[k] for k in ("INTEGRATION_HUB_CATALOG", "DAGSTER_HOME", "INTEGRATION_HUB_API_URL")})
    from ..core.catalog import load_catalog
    from ..core.state import dagster_instance

    # Create the instance's storage once, before the UI and the API server both open it.
    with dagster_instance(load_catalog(catalog)) as instance:
        instance.get_runs(limit=1)
    env_file = directory / DEMO_ENV_FILE
    if _has_api():
        issue_demo_tokens(catalog, env_file, api_url)
    print(f"demo catalog: {catalog}")
    print(f"drop CSV files into: {directory / 'data' / 'landing' / 'crm'}")
    print(f"exported files appear in: {directory / 'data' / 'exports'}")
    if env_file.exists():
        print(f"API credentials: source {env_file}  (then: integration-hub endpoint realtime_enrichment)")
    if args.no_ui:
        return 0
    return _serve(directory, catalog, env, args.port, args.api_port)


def _start(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    # Its own session and process group: Ctrl-C reaches only the demo, which then stops each
    # group whole (dagster dev's webserver, daemon, code servers and run workers stay in its group).
    return subprocess.Popen(command, env=env, cwd=cwd, start_new_session=True)


def _stop(children: list[subprocess.Popen], grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """SIGINT to every child's process group, then SIGKILL to whatever is left after the grace period."""
    for child in children:
        _signal_group(child, signal.SIGINT)
    deadline = time.monotonic() + grace_seconds
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    # Members of a group can outlive its leader (a run worker finishing a step): no orphans.
    for child in children:
        _signal_group(child, signal.SIGKILL)
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _signal_group(child: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(child.pid, sig)  # the child leads its group: its pid is the group id
    except (ProcessLookupError, PermissionError):
        pass


def _serve(directory: Path, catalog: Path, env: dict[str, str], port: int, api_port: int) -> int:
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    children: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops the demo like Ctrl-C
    try:
        if _has_api():
            children.append(_start(
                [sys.executable, "-m", "integration_hub.cli.main", "--catalog", str(catalog), "api",
                 "--port", str(api_port)],
                env, directory,
            ))
            print(f"End User Update API: http://127.0.0.1:{api_port}")
        ui = _start(
            [dagster, "dev", "-w", str(directory / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            env, directory,
        )
        children.append(ui)
        print(f"Dagster UI: http://127.0.0.1:{port} (Ctrl-C to stop)", flush=True)
        while True:
            code = ui.poll()
            if code is not None:
                return code
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping the demo ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave children behind
        signal.signal(signal.SIGTERM, previous)
        _stop(children)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _has_api() -> bool:
    import importlib.util

    return importlib.util.find_spec("integration_hub.api.cli") is not None
