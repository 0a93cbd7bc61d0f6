"""Dagster's `dg` command line loads the project (pyproject [tool.dg]) with a sample catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from integration_hub.cli.demo import write_demo

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent  # where pyproject.toml declares the dg project


def test_dg_list_defs_and_check_defs_run_cleanly_on_the_project(tmp_path: Path) -> None:
    catalog = write_demo(tmp_path / "demo")
    env = {**os.environ, "INTEGRATION_HUB_CATALOG": str(catalog), "DAGSTER_HOME": str(tmp_path / "home"),
           "DAGSTER_DISABLE_TELEMETRY": "1"}
    (tmp_path / "home").mkdir()
    dg = str(Path(sys.executable).parent / "dg")

    listed = subprocess.run([dg, "list", "defs", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=150)
    assert listed.returncode == 0, listed.stderr[-2000:]
    defs = json.loads(listed.stdout)
    assets = {a["asset_key"]: a for a in defs["assets"]}
    # The whole lineage of the demo: raw files -> attributes -> user_profiles -> report -> export.
    assert assets["attributes_crm"]["dependency_keys"] == ["crm_files"]
    assert "attributes_crm" in assets["user_profiles"]["dependency_keys"]
    assert "user_profiles" in assets["report_active_users"]["dependency_keys"]
    assert assets["export_active_users_export"]["dependency_keys"] == ["report_active_users"]
    assert assets["salesforce_onboarding_to_salesforce"]["dependency_keys"] == ["report_onboarding_progress"]
    checks = {c["key"] for c in defs["asset_checks"]}
    assert {"attributes_crm:sources_applied", "salesforce_onboarding_to_salesforce:records_applied"} <= checks
    assert {s["name"] for s in defs["sensors"]} == {"crm_sensor", "realtime_enrichment_sensor",
                                                    "active_users_export_sensor"}

    checked = subprocess.run([dg, "check", "defs"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "All definitions loaded successfully." in checked.stdout
