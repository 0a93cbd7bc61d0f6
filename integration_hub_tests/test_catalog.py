"""Catalog validation: every problem reported at once, each naming what, where and the fix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from integration_hub.core.catalog import CatalogError, load_catalog, parse_catalog

BASE = {
    "connections": [
        {"name": "bucket", "type": "s3", "bucket": "acme", "prefix": "inbound/"},
        {"name": "drop", "type": "local", "path": "landing"},
    ],
    "integrations": [
        {
            "name": "crm",
            "type": "s3_csv",
            "connection": "bucket",
            "folder": "crm",
            "user_id_column": "email",
            "properties": [{"column": "Plan", "name": "plan", "type": "string"}],
        }
    ],
}


def problems(document: dict) -> list[str]:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(document)
    return caught.value.problems


def with_integrations(*integrations: dict) -> dict:
    document = copy.deepcopy(BASE)
    document["integrations"] = [*document["integrations"], *integrations]
    return document


def csv_integration(name: str, **fields) -> dict:
    return {
        "name": name,
        "type": "s3_csv",
        "connection": "bucket",
        "folder": name,
        "user_id_column": "id",
        "properties": [{"column": f"{name}_col", "name": f"{name}_prop", "type": "number"}],
        **fields,
    }


def test_a_valid_catalog_loads_with_defaults() -> None:
    catalog = parse_catalog(copy.deepcopy(BASE))
    crm = catalog.integration("crm")
    assert crm.schedule == "*/15 * * * *" and crm.on_blank == "keep" and crm.max_rejected_ratio == 0.1
    assert crm.max_file_bytes == 1024**3 and catalog.max_attributes == 100
    assert catalog.connection("bucket").prefix == "inbound"


def test_unknown_connection_names_the_integration_and_the_known_ones() -> None:
    [problem] = problems(with_integrations(csv_integration("web", connection="nope")))
    assert "integration 'web'" in problem and "'nope'" in problem and "known: bucket, drop" in problem


def test_folder_outside_the_prefix() -> None:
    found = problems(with_integrations(csv_integration("web", folder="../other"), csv_integration("abs", folder="/x")))
    assert any("'web'" in p and "folder" in p and "'..'" in p for p in found)
    assert any("'abs'" in p and "leading '/'" in p for p in found)


def test_overlapping_folders_across_connections() -> None:
    document = with_integrations(csv_integration("web", folder="crm/web"))
    document["connections"].append({"name": "same_bucket", "type": "s3", "bucket": "acme", "prefix": "inbound/crm"})
    document["integrations"].append(csv_integration("again", connection="same_bucket", folder="x"))
    found = problems(document)
    assert any("'crm' and 'web'" in p and "overlapping" in p for p in found)
    assert any("'crm' and 'again'" in p or "'again' and 'crm'" in p for p in found)


def test_duplicate_property_names_across_integrations() -> None:
    other = csv_integration("web")
    other["properties"] = [{"column": "p", "name": "plan", "type": "string"}]
    [problem] = problems(with_integrations(other))
    assert "'plan'" in problem and "already used by integration 'crm'" in problem


def test_too_many_properties_in_total() -> None:
    document = copy.deepcopy(BASE)
    document["max_attributes"] = 3
    wide = csv_integration("web")
    wide["properties"] = [{"column": f"c{i}", "name": f"p{i}", "type": "string"} for i in range(3)]
    document["integrations"].append(wide)
    [problem] = problems(document)
    assert "4 properties in total" in problem and "max_attributes (3)" in problem


def test_max_attributes_cannot_exceed_100() -> None:
    document = copy.deepcopy(BASE)
    document["max_attributes"] = 500
    [problem] = problems(document)
    assert "max_attributes" in problem


def test_bad_cron_and_bad_type_are_both_reported() -> None:
    found = problems(
        with_integrations(
            csv_integration("web", schedule="every 5 minutes"),
            {**csv_integration("app"), "properties": [{"column": "x", "name": "x_prop", "type": "integer"}]},
        )
    )
    assert len(found) == 2
    assert any("'web'" in p and "not a valid cron" in p and "*/15 * * * *" in p for p in found)
    assert any("'app'" in p and "type" in p and "'integer'" in p for p in found)


def test_unknown_fields_and_kinds_are_named() -> None:
    found = problems(with_integrations({**csv_integration("web"), "colour": "blue"}, {"name": "x", "type": "ftp"}))
    assert any("'web'" in p and "'colour'" in p and "not a known field" in p for p in found)
    assert any("'x'" in p and "unknown type" in p for p in found)


def test_wrong_connection_kind_for_the_integration() -> None:
    document = with_integrations(
        {"name": "sf", "type": "salesforce", "connection": "drop", "report": "r", "object": "Contact",
         "report_key": "email", "salesforce_key": "Email", "fields": [{"column": "a", "field": "A__c"}]}
    )
    document["reports"] = [{"name": "r", "sql": "SELECT 1"}]
    [problem] = problems(document)
    assert "'drop' is a local connection" in problem and "needs a salesforce connection" in problem


def test_environment_variables_fill_values_and_missing_ones_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    document = copy.deepcopy(BASE)
    document["connections"][0].update({"bucket": "${TEST_BUCKET}", "endpoint_url": "${UNSET_OPTIONAL_ENDPOINT}"})
    monkeypatch.setenv("TEST_BUCKET", "from-env")
    catalog = parse_catalog(document)
    assert catalog.connection("bucket").bucket == "from-env"
    assert catalog.connection("bucket").endpoint_url is None  # an unset optional value is simply absent
    monkeypatch.delenv("TEST_BUCKET")
    [problem] = problems(copy.deepcopy(document))
    assert "connection 'bucket'" in problem and "TEST_BUCKET" in problem


def test_secrets_are_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    document = copy.deepcopy(BASE)
    document["connections"][0]["secret_access_key"] = "${TEST_SECRET}"
    monkeypatch.setenv("TEST_SECRET", "hunter2-very-secret")
    catalog = parse_catalog(document)
    assert "hunter2" not in repr(catalog) and "hunter2" not in str(catalog.model_dump())


def test_files_are_read_relative_to_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "integrations.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(BASE))
    catalog = load_catalog(path)
    assert catalog.warehouse_catalog_path == tmp_path / "conf" / "data" / "catalog.sqlite"
    assert catalog.warehouse_data_path == tmp_path / "conf" / "data" / "lake"


def test_a_missing_or_broken_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist.*--catalog"):
        load_catalog(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("connections: [\n  - name: x\n")
    with pytest.raises(CatalogError, match="not valid YAML at line"):
        load_catalog(broken)


def test_reserved_and_badly_formed_names() -> None:
    reserved = csv_integration("web")
    reserved["properties"] = [{"column": "a", "name": "user_id"}]
    spaced = csv_integration("app")
    spaced["properties"] = [{"column": "b", "name": "Plan Tier"}]
    found = problems(with_integrations(reserved, spaced, csv_integration("Bad-Name")))
    assert any("'user_id' is reserved" in p for p in found)
    assert any("lower-case letters" in p and "'Plan Tier'" in p for p in found)
    assert any("lower-case letters" in p and "'Bad-Name'" in p for p in found)


def _cron_candidates() -> list[str]:
    """Each field through plain forms and others, the rest `*`; every day of every month; odd spacing."""
    values = ["*", "*/0", "*/1", "*/5", "*/7", "00", "-1", "1-5", "1,2", "?", "L", "MON", "a", "**", "*/"]
    values += [str(n) for n in range(0, 62)] + [f"*/{n}" for n in (12, 23, 24, 31, 32, 59, 60, 61)]
    candidates = []
    for k in range(5):
        for value in values:
            fields = ["*"] * 5
            fields[k] = value
            candidates.append(" ".join(fields))
    months = [*map(str, range(0, 14)), "*", "*/2"]
    candidates += [f"0 0 {day} {month} *" for day in range(0, 33) for month in months]  # e.g. no 30th of February
    candidates += ["*/15 * * * *", "0 9 * * *", "30 3 1 1 0", "0 0 31 12 7"]
    candidates += ["0  3 * * *", " 0 3 * * *", "0 3 * * * *", "0 3 * *", "0 3 * * *\n", "", "@daily"]
    return candidates


def test_cron_expressions_are_judged_as_dagster_judges_them() -> None:
    from dagster._utils.schedules import is_valid_cron_string as dagster_accepts

    from integration_hub.core.catalog import is_valid_cron_string

    judged = {cron: is_valid_cron_string(cron) for cron in _cron_candidates()}
    assert judged == {cron: dagster_accepts(cron) for cron in judged}
    assert judged["*/15 * * * *"] and judged["0 9 * * *"] and not judged["0 0 30 2 *"] and not judged["60 * * * *"]


def test_loading_a_catalog_with_plain_schedules_does_not_import_dagster(tmp_path: Path) -> None:
    """`integration-hub sql` and `history` load the catalog: Dagster's import is a second of their start."""
    import subprocess
    import sys

    path = tmp_path / "integrations.yaml"
    document = {**copy.deepcopy(BASE), "warehouse": {"maintenance_schedule": "30 3 * * *"}}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    probe = (
        "import sys; from integration_hub.core.catalog import load_catalog; "
        f"load_catalog({str(path)!r}); print('dagster' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
