"""`integration-hub demo`: a sample catalog and files for a local-folder integration, then the UI.

Nothing in the demo needs a cloud account: the landing folder is on this machine, the sensor
notices the sample files within seconds and the first run succeeds within a minute.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

DEMO_CATALOG = """\
# The demo catalog: one local-folder CSV integration, one API integration, one report.
warehouse: {catalog: data/catalog.sqlite, data_path: data/lake/}
landing: data/api_landing
max_attributes: 100

connections:
  - name: drop_folder
    type: local
    path: data/landing

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

reports:
  - name: active_users
    sql: SELECT user_id AS email, plan, support_tickets FROM user_profiles WHERE active
"""

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


def cmd_demo(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    catalog = write_demo(directory)
    env = dict(os.environ)
    env["INTEGRATION_HUB_CATALOG"] = str(catalog)
    env["DAGSTER_HOME"] = str(directory / ".dagster_home")
    os.environ.update({k: env[k] for k in ("INTEGRATION_HUB_CATALOG", "DAGSTER_HOME")})
    from ..core.catalog import load_catalog
    from ..core.state import dagster_instance

    # Create the instance's storage once, before the UI and the API server both open it.
    with dagster_instance(load_catalog(catalog)) as instance:
        instance.get_runs(limit=1)
    print(f"demo catalog: {catalog}")
    print(f"drop CSV files into: {directory / 'data' / 'landing' / 'crm'}")
    if args.no_ui:
        return 0
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"
    children = []
    if _has_api():
        children.append(
            subprocess.Popen([sys.executable, "-m", "integration_hub.cli.main", "--catalog", str(catalog), "api"], env=env)
        )
    print(f"Dagster UI: http://127.0.0.1:{args.port} (Ctrl-C to stop)")
    ui = subprocess.Popen(
        [dagster, "dev", "-w", str(directory / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(args.port)],
        env=env,
        cwd=directory,
    )
    children.append(ui)
    try:
        return ui.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()


def _has_api() -> bool:
    import importlib.util

    return importlib.util.find_spec("integration_hub.api.cli") is not None
