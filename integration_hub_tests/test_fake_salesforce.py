"""Tests for the HTTPS fake Salesforce org, driven through unmodified simple-salesforce."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce, format_soql
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceOperationError,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from integration_hub_tests.fakes.salesforce import (
    FakeSalesforce,
    external_id_field,
    normalize_id,
    number_field,
    picklist_field,
    text_field,
    to_18,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake() -> Iterator[FakeSalesforce]:
    with FakeSalesforce(with_standard_objects=True) as org:
        org.add_object(
            "Invoice__c",
            [
                number_field("Amount__c", precision=10, scale=2),
                picklist_field("Status__c", ["Open", "Paid"], restricted=True),
                text_field("Note__c", 10),
                external_id_field("External_Id__c"),
            ],
        )
        yield org
        # A bug inside the fake must never hide behind a 500 the code under test tolerates.
        assert org.server_errors == []


@pytest.fixture
def sf(fake: FakeSalesforce) -> Salesforce:
    return fake.client()


def _contacts(fake: FakeSalesforce, n: int, **extra: Any) -> list[str]:
    return fake.insert(
        "Contact", [{"LastName": f"Last{i}", "Email": f"user{i}@example.com", **extra} for i in range(n)]
    )


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _error_code(exc: pytest.ExceptionInfo[Any]) -> str:
    return exc.value.content[0]["errorCode"]


# --- ids and schema ---------------------------------------------------------------------------


def test_ids_use_key_prefixes_and_the_18_char_checksum(fake: FakeSalesforce) -> None:
    assert to_18("001A0000006Vm9r") == "001A0000006Vm9rIAC"  # the documented example
    assert normalize_id("001a0000006vm9riac") == "001A0000006Vm9rIAC"  # 18-char Ids are case-safe
    assert normalize_id("001A0000006Vm9rI9C") is None
    assert normalize_id("not-an-id") is None

    fake.add_object("Second__c", [text_field("Name")])
    prefixes = {
        name: fake.insert(name, [rec])[0][:3]
        for name, rec in [
            ("Account", {"Name": "Acme"}),
            ("Contact", {"LastName": "Ng"}),
            ("Lead", {"LastName": "Ng", "Company": "Acme"}),
            ("Invoice__c", {}),
            ("Second__c", {}),
        ]
    }
    assert prefixes == {
        "Account": "001",
        "Contact": "003",
        "Lead": "00Q",
        "Invoice__c": "a0X",
        "Second__c": "a0Y",
    }
    [cid] = fake.insert("Contact", [{"LastName": "Lee"}])
    assert len(cid) == 18 and normalize_id(cid) == cid and normalize_id(cid[:15]) == cid
    assert fake.get("Contact", cid[:15])["Name"] == "Lee"
    with pytest.raises(ValueError, match="REQUIRED_FIELD_MISSING"):
        fake.insert("Contact", [{"FirstName": "no last name"}])


def test_describe_matches_the_real_shape(fake: FakeSalesforce, sf: Salesforce) -> None:
    desc = sf.Contact.describe()
    assert desc["name"] == "Contact" and desc["keyPrefix"] == "003"
    fields = {f["name"]: f for f in desc["fields"]}
    for key in (
        "name",
        "label",
        "type",
        "length",
        "updateable",
        "createable",
        "filterable",
        "nillable",
        "picklistValues",
        "externalId",
        "idLookup",
        "unique",
    ):
        assert key in fields["Email"]
    assert fields["Email"]["type"] == "email" and fields["Email"]["length"] == 80
    assert fields["Id"]["type"] == "id" and not fields["Id"]["updateable"]
    assert fields["LastName"]["nillable"] is False
    assert fields["Description"]["filterable"] is False  # long text area
    assert fields["AccountId"]["referenceTo"] == ["Account"]
    assert {
        "active": True,
        "defaultValue": False,
        "label": "Web",
        "validFor": None,
        "value": "Web",
    } in fields["LeadSource"]["picklistValues"]

    custom = {f["name"]: f for f in sf.Invoice__c.describe()["fields"]}
    assert custom["Status__c"]["restrictedPicklist"] is True
    assert custom["External_Id__c"]["externalId"] is True and custom["Amount__c"]["type"] == "double"

    with pytest.raises(SalesforceResourceNotFound) as exc:
        sf.Nope__c.describe()
    assert _error_code(exc) == "NOT_FOUND"
    assert fake.calls_by_kind() == {"describe": 3}
    assert fake.calls[-1]["status"] == 404


# --- REST query -------------------------------------------------------------------------------


def test_query_pages_at_2000_and_query_all_follows_next_records_url(
    fake: FakeSalesforce, sf: Salesforce
) -> None:
    ids = _contacts(fake, 4500)

    first = sf.query("SELECT Id, Email FROM Contact")
    assert (first["totalSize"], first["done"], len(first["records"])) == (4500, False, 2000)
    assert re.fullmatch(r"/services/data/v59\.0/query/01g\w{15}-2000", first["nextRecordsUrl"])
    rec = first["records"][0]
    assert rec["attributes"] == {"type": "Contact", "url": f"/services/data/v59.0/sobjects/Contact/{ids[0]}"}
    assert list(rec) == ["attributes", "Id", "Email"]

    everything = sf.query_all("SELECT Id FROM Contact")
    assert everything["totalSize"] == 4500
    assert [r["Id"] for r in everything["records"]] == ids
    assert fake.calls_by_kind() == {"query": 2, "query_more": 2}


def test_query_filters_like_soql(fake: FakeSalesforce, sf: Salesforce) -> None:
    _contacts(fake, 10)
    fake.insert("Contact", [{"LastName": "Zed", "Email": None}])

    # Equality on text/email is case-insensitive, IN lists work, LIMIT caps the result.
    res = sf.query("SELECT Id, Email FROM Contact WHERE Email IN ('USER1@EXAMPLE.COM', 'user2@example.com')")
    assert sorted(r["Email"] for r in res["records"]) == ["user1@example.com", "user2@example.com"]
    assert sf.query("SELECT Id FROM Contact WHERE LastName = 'last3' OR LastName = 'LAST4'")["totalSize"] == 2
    assert sf.query("SELECT Id FROM Contact LIMIT 3")["totalSize"] == 3
    assert sf.query("SELECT Id FROM Contact WHERE Email = null")["totalSize"] == 1
    assert (
        sf.query(
            "SELECT Id FROM Contact WHERE (LastName = 'Zed' OR Email = 'user0@example.com') AND Email != null"
        )["totalSize"]
        == 1
    )
    assert sf.query("SELECT COUNT() FROM Contact WHERE LastName LIKE 'last%'")["totalSize"] == 10
    ordered = sf.query("SELECT LastName FROM Contact ORDER BY LastName DESC LIMIT 2")["records"]
    assert [r["LastName"] for r in ordered] == ["Zed", "Last9"]


def test_request_uri_over_16384_bytes_gets_414(fake: FakeSalesforce, sf: Salesforce) -> None:
    emails = [f"someone.with.a.long.address.{i}@example.com" for i in range(600)]
    soql = format_soql("SELECT Id FROM Contact WHERE Email IN {}", emails)
    with pytest.raises(SalesforceGeneralError) as exc:
        sf.query(soql)
    assert exc.value.status == 414
    assert fake.calls[-1] == {
        "method": "GET",
        "path": "/services/data/v59.0/query/",
        "kind": "query",
        "status": 414,
    }
    # Just under the limit is fine.
    assert sf.query(format_soql("SELECT Id FROM Contact WHERE Email IN {}", emails[:150]))["totalSize"] == 0


def test_escaped_injection_matches_nothing_and_unescaped_is_malformed(
    fake: FakeSalesforce, sf: Salesforce
) -> None:
    weird = 'O\'Brien \\ "q" _% \n\t'
    fake.insert("Contact", [{"LastName": "Alice"}, {"LastName": "Bob"}, {"LastName": weird}])

    injection = "x' OR LastName != '"
    escaped = format_soql("SELECT Id FROM Contact WHERE LastName = {}", injection)
    assert escaped.endswith("'x\\' OR LastName != \\''")
    assert sf.query(escaped)["totalSize"] == 0
    # Every escape sequence round-trips to the exact stored value.
    assert (
        sf.query(format_soql("SELECT LastName FROM Contact WHERE LastName = {}", weird))["records"][0][
            "LastName"
        ]
        == weird
    )

    malformed = [
        "SELECT Id FROM Contact WHERE LastName = 'O'Brien'",
        # SOQL refuses AND and OR at one level without parentheses, so this injection cannot run.
        "SELECT Id FROM Contact WHERE Email = 'a@b.co' AND LastName = 'x' OR LastName != ''",
        "SELECT Id FROM Contact WHERE LastName = 'unterminated",
        "SELECT Id FROM Contact WHERE LastName = 'bad \\q escape'",
        'SELECT Id FROM Contact WHERE LastName = "double quoted"',
    ]
    for soql in malformed:
        with pytest.raises(SalesforceMalformedRequest) as exc:
            sf.query(soql)
        assert _error_code(exc) == "MALFORMED_QUERY", soql

    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query("SELECT Id, Nope__c FROM Contact")
    assert _error_code(exc) == "INVALID_FIELD"
    assert "No such column 'Nope__c' on entity 'Contact'" in exc.value.content[0]["message"]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query("SELECT Id FROM Contact WHERE Id = 'abc'")
    assert _error_code(exc) == "INVALID_QUERY_FILTER_OPERATOR"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.query("SELECT Id FROM Nothing__c")
    assert _error_code(exc) == "INVALID_TYPE"


# --- sObject Collections ----------------------------------------------------------------------


def test_composite_update_reports_per_record_results_in_order(fake: FakeSalesforce, sf: Salesforce) -> None:
    c = _contacts(fake, 4, Title="Old")
    [gone] = _contacts(fake, 1)
    fake.delete("Contact", [gone])
    [inv] = fake.insert("Invoice__c", [{"Amount__c": 1.5, "Status__c": "Open", "Note__c": "keep"}])

    def contact(rid: str, **values: Any) -> dict[str, Any]:
        return {"attributes": {"type": "Contact"}, "id": rid, **values}

    def invoice(**values: Any) -> dict[str, Any]:
        return {"attributes": {"type": "Invoice__c"}, "id": inv, **values}

    records = [
        contact(c[0], Email="new@example.com", Title=None),  # null clears a nillable field
        contact(c[1], Nope__c="x"),
        contact(c[2], CreatedDate="2020-01-01T00:00:00Z"),
        contact("003xyz", Title="x"),
        contact(to_18("003Hs000zzzzzzz"), Title="x"),
        contact(gone, Title="x"),
        invoice(Amount__c="abc"),
        invoice(Note__c="much too long"),
        invoice(Status__c="Bogus"),
        contact(c[3], LastName=None),
        contact(c[1], email="MIXED@Example.com"),  # field names are case-insensitive
    ]
    results = sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": False, "records": records})

    assert results[0] == {"id": c[0], "success": True, "errors": []}
    assert results[10] == {"id": c[1], "success": True, "errors": []}
    codes = [r["errors"][0]["statusCode"] if r["errors"] else None for r in results]
    assert codes == [
        None,
        "INVALID_FIELD",
        "INVALID_FIELD_FOR_INSERT_UPDATE",
        "MALFORMED_ID",
        "INVALID_CROSS_REFERENCE_KEY",
        "ENTITY_IS_DELETED",
        "INVALID_TYPE_ON_FIELD_IN_RECORD",
        "STRING_TOO_LONG",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "REQUIRED_FIELD_MISSING",
        None,
    ]
    assert all("id" not in r for r in results if not r["success"])  # failed SaveResults have no id
    assert results[2]["errors"][0]["fields"] == ["CreatedDate"]
    assert results[8]["errors"][0]["message"] == "Status: bad value for restricted picklist field: Bogus"

    assert fake.get("Contact", c[0])["Email"] == "new@example.com"
    assert fake.get("Contact", c[0])["Title"] is None
    assert fake.get("Contact", c[1])["Email"] == "MIXED@Example.com"
    assert fake.get("Contact", c[3])["LastName"] == "Last3"
    assert fake.get("Invoice__c", inv)["Note__c"] == "keep"


def test_composite_all_or_none_rolls_back_and_more_than_200_is_rejected(
    fake: FakeSalesforce, sf: Salesforce
) -> None:
    c = _contacts(fake, 201)
    payload = {
        "allOrNone": True,
        "records": [
            {"attributes": {"type": "Contact"}, "id": c[0], "Title": "changed"},
            {"attributes": {"type": "Contact"}, "id": c[1], "Title": "x" * 200},
        ],
    }
    results = sf.restful("composite/sobjects", method="PATCH", json=payload)
    assert results[0]["id"] == c[0] and results[0]["success"] is False
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert results[1]["errors"][0]["statusCode"] == "STRING_TOO_LONG"
    assert fake.get("Contact", c[0])["Title"] is None

    too_many = [{"attributes": {"type": "Contact"}, "id": rid, "Title": "t"} for rid in c]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.restful("composite/sobjects", method="PATCH", json={"allOrNone": False, "records": too_many})
    assert exc.value.content == [
        {
            "message": "record limit reached. cannot submit more than 200 records into this call",
            "errorCode": "EXCEEDED_ID_LIMIT",
        }
    ]
    assert all(r["Title"] is None for r in fake.records("Contact"))
    assert fake.calls_by_kind() == {"composite_update": 2}


def test_strict_deserialization_rejects_the_whole_request() -> None:
    with FakeSalesforce(with_standard_objects=True, strict_deserialization=True) as fake:
        [cid] = _contacts(fake, 1)
        sf = fake.client()
        for values, code in [
            ({"Nope__c": 1}, "INVALID_FIELD"),
            ({"HasOptedOutOfEmail": "maybe"}, "JSON_PARSER_ERROR"),
        ]:
            body = {"records": [{"attributes": {"type": "Contact"}, "id": cid, **values}]}
            with pytest.raises(SalesforceMalformedRequest) as exc:
                sf.restful("composite/sobjects", method="PATCH", json=body)
            assert _error_code(exc) == code


def test_create_update_delete_calls_are_logged_by_kind(fake: FakeSalesforce, sf: Salesforce) -> None:
    created = sf.Contact.create({"LastName": "Single"})
    assert created["success"] and created["id"].startswith("003")
    assert sf.Contact.update(created["id"], {"Title": "T"}) == 204
    assert sf.Contact.get(created["id"])["Title"] == "T"
    assert sf.Contact.delete(created["id"]) == 204
    with pytest.raises(SalesforceResourceNotFound) as exc:
        sf.Contact.update(created["id"], {"Title": "again"})
    assert _error_code(exc) == "ENTITY_IS_DELETED"
    batch = {"records": [{"attributes": {"type": "Contact"}, "LastName": "Batch"}]}
    assert sf.restful("composite/sobjects", method="POST", json=batch)[0]["success"] is True
    deleted = sf.query_all("SELECT Id, IsDeleted FROM Contact WHERE IsDeleted = true", include_deleted=True)
    assert [r["Id"] for r in deleted["records"]] == [created["id"]]

    kinds = fake.calls_by_kind()
    assert kinds["create"] == 2 and kinds["update_single"] == 2 and kinds["delete"] == 1


# --- Bulk API 2.0 ingest ----------------------------------------------------------------------


def test_bulk2_update_5000_rows_with_successful_and_failed_results(
    fake: FakeSalesforce, sf: Salesforce
) -> None:
    ids = _contacts(fake, 5000, Title="Old")
    fake.fail_lock(ids[:3])
    records = [{"Id": rid, "Title": f"New {n}"} for n, rid in enumerate(ids)]
    records[10]["Title"] = ""  # empty cell: leave unchanged
    records[11]["Title"] = "#N/A"  # Bulk's way of writing null
    records[12]["Id"] = "003bad"

    [result] = sf.bulk2.Contact.update(records=records, wait=0)
    assert result["numberRecordsProcessed"] == 5000
    assert result["numberRecordsFailed"] == 4

    job_id = result["job_id"]
    ok = _rows(sf.bulk2.Contact.get_successful_records(job_id))
    assert len(ok) == 4996 and {r["sf__Created"] for r in ok} == {"false"}
    assert set(ok[0]) == {"sf__Id", "sf__Created", "Id", "Title"}
    failed = {r["Id"]: r for r in _rows(sf.bulk2.Contact.get_failed_records(job_id))}
    for rid in ids[:3]:
        assert (
            failed[rid]["sf__Error"]
            == "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record:--"
        )
        assert failed[rid]["sf__Id"] == rid
    assert failed["003bad"]["sf__Error"].startswith("MALFORMED_ID:malformed id 003bad:Id --")
    # Nothing left unprocessed: only the header (simple-salesforce orders columns arbitrarily).
    assert set(sf.bulk2.Contact.get_unprocessed_records(job_id).strip().split(",")) == {"Id", "Title"}

    assert fake.get("Contact", ids[0])["Title"] == "Old"  # locked
    assert fake.get("Contact", ids[10])["Title"] == "Old"
    assert fake.get("Contact", ids[11])["Title"] is None
    assert fake.get("Contact", ids[4999])["Title"] == "New 4999"

    # Lock faults are consumed, so a retry of just those rows now succeeds.
    [retry] = sf.bulk2.Contact.update(records=[{"Id": rid, "Title": "Retried"} for rid in ids[:3]], wait=0)
    assert retry["numberRecordsFailed"] == 0 and fake.get("Contact", ids[0])["Title"] == "Retried"

    kinds = fake.calls_by_kind()
    assert (
        kinds["bulk_ingest_create"] == 2
        and kinds["bulk_ingest_upload"] == 2
        and kinds["bulk_ingest_close"] == 2
    )
    assert kinds["bulk_ingest_results"] == 3 and "create" not in kinds
    job = next(j for j in fake.ingest_jobs() if j["id"] == job_id)
    assert job["state"] == "JobComplete" and job["operation"] == "update" and job["object"] == "Contact"


def test_bulk2_from_csv_file_insert_and_failures(fake: FakeSalesforce, sf: Salesforce, tmp_path: Any) -> None:
    ids = _contacts(fake, 3)
    path = tmp_path / "contacts.csv"
    path.write_text(f"Id,Email\n{ids[0]},a@example.com\n{ids[1]},not-an-email\n{ids[2]},\n", encoding="utf-8")
    [res] = sf.bulk2.Contact.update(csv_file=str(path), wait=0)
    assert (res["numberRecordsProcessed"], res["numberRecordsFailed"]) == (3, 1)
    [failed] = _rows(sf.bulk2.Contact.get_failed_records(res["job_id"]))
    assert failed["sf__Error"] == "INVALID_EMAIL_ADDRESS:Email: invalid email address: not-an-email:Email --"
    assert fake.get("Contact", ids[2])["Email"] == "user2@example.com"

    [ins] = sf.bulk2.Lead.insert(
        records=[{"LastName": "New", "Company": "Acme"}, {"LastName": "NoCompany"}], wait=0
    )
    assert ins["numberRecordsFailed"] == 1
    created = _rows(sf.bulk2.Lead.get_successful_records(ins["job_id"]))
    assert created[0]["sf__Created"] == "true" and fake.get("Lead", created[0]["sf__Id"])["Status"] == (
        "Open - Not Contacted"
    )

    bad = tmp_path / "bad.csv"
    bad.write_text(f"Id,Nope__c\n{ids[0]},x\n", encoding="utf-8")
    with pytest.raises(SalesforceOperationError, match="Field name not found : Nope__c"):
        sf.bulk2.Contact.update(csv_file=str(bad), wait=0)

    # simple-salesforce always re-writes CSV with the job's line ending, so check the raw API.
    session, base = fake.session(), f"{fake.url}/services/data/v59.0/jobs/ingest"
    session.headers["Authorization"] = f"Bearer {fake.issue_access_token()}"
    job = session.post(
        base, json={"object": "Contact", "operation": "update", "lineEnding": "LF"}, timeout=10
    ).json()
    assert job["state"] == "Open" and job["contentUrl"].endswith(f"/jobs/ingest/{job['id']}/batches")
    upload = session.put(
        f"{base}/{job['id']}/batches",
        data=f"Id,Title\r\n{ids[0]},x\r\n",
        headers={"Content-Type": "text/csv"},
        timeout=10,
    )
    assert upload.status_code == 201
    assert session.put(f"{base}/{job['id']}/batches", data="Id\n", timeout=10).json()[0]["errorCode"] == (
        "BULK_API_ERROR"  # only one upload per job
    )
    session.patch(f"{base}/{job['id']}", json={"state": "UploadComplete"}, timeout=10)
    status = session.get(f"{base}/{job['id']}", timeout=10).json()
    assert status["state"] == "Failed" and "LineEnding is invalid" in status["errorMessage"]
    assert session.delete(f"{base}/{job['id']}", timeout=10).status_code == 204

    [existing] = fake.insert("Invoice__c", [{"External_Id__c": "E-1", "Amount__c": 1}])
    [upsert] = sf.bulk2.Invoice__c.upsert(
        records=[
            {"External_Id__c": "e-1", "Amount__c": "10"},  # matches E-1 case-insensitively
            {"External_Id__c": "E-2", "Amount__c": "12.5"},
            {"External_Id__c": "E-3", "Amount__c": "1"},
            {"External_Id__c": "E-3", "Amount__c": "2"},
        ],
        external_id_field="External_Id__c",
        wait=0,
    )
    assert (upsert["numberRecordsProcessed"], upsert["numberRecordsFailed"]) == (4, 2)
    done = {
        r["External_Id__c"]: r for r in _rows(sf.bulk2.Invoice__c.get_successful_records(upsert["job_id"]))
    }
    assert done["e-1"]["sf__Id"] == existing and done["e-1"]["sf__Created"] == "false"
    assert done["E-2"]["sf__Created"] == "true"
    dupes = _rows(sf.bulk2.Invoice__c.get_failed_records(upsert["job_id"]))
    assert [r["sf__Error"] for r in dupes] == [
        "DUPLICATE_VALUE:Duplicate external id specified: E-3:External_Id__c --"
    ] * 2
    assert fake.get("Invoice__c", existing)["Amount__c"] == 10.0

    kinds = fake.calls_by_kind()
    assert kinds["create"] == 2  # insert and upsert jobs count as record creation
    assert kinds["bulk_ingest_create"] == 3


def test_bulk2_abort_reports_uploaded_rows_as_unprocessed(fake: FakeSalesforce) -> None:
    [cid] = _contacts(fake, 1)
    session, base = fake.session(), f"{fake.url}/services/data/v59.0/jobs/ingest"
    session.headers["Authorization"] = f"Bearer {fake.issue_access_token()}"
    job = session.post(base, json={"object": "Contact", "operation": "update"}, timeout=10).json()
    session.put(f"{base}/{job['id']}/batches", data=f"Id,Title\n{cid},x\n", timeout=10)
    aborted = session.patch(f"{base}/{job['id']}", json={"state": "Aborted"}, timeout=10).json()
    assert aborted["state"] == "Aborted"
    unprocessed = session.get(f"{base}/{job['id']}/unprocessedrecords/", timeout=10).text
    assert unprocessed == f'Id,Title\n"{cid}","x"\n'
    assert fake.get("Contact", cid)["Title"] is None


def test_bulk2_upsert_on_id_and_100k_row_update(fake: FakeSalesforce, sf: Salesforce) -> None:
    ids = _contacts(fake, 100_000)
    # Upsert keyed on Id accepts 15-char (case-sensitive) Ids and creates rows without one.
    [up] = sf.bulk2.Contact.upsert(
        records=[{"Id": ids[0][:15], "LastName": "Up"}, {"Id": "", "LastName": "New"}], wait=0
    )
    assert up["numberRecordsFailed"] == 0
    assert fake.get("Contact", ids[0])["LastName"] == "Up" and fake.count("Contact") == 100_001

    [res] = sf.bulk2.Contact.update(records=[{"Id": rid, "Title": "Bulk"} for rid in ids], wait=0)
    assert (res["numberRecordsProcessed"], res["numberRecordsFailed"]) == (100_000, 0)
    assert fake.get("Contact", ids[-1])["Title"] == "Bulk"


def test_bulk2_processing_delay_is_polled(fake: FakeSalesforce, sf: Salesforce) -> None:
    ids = _contacts(fake, 5)
    fake.bulk_processing_delay = 0.2
    [res] = sf.bulk2.Contact.update(records=[{"Id": rid, "Title": "Later"} for rid in ids], wait=0)
    assert res["numberRecordsFailed"] == 0
    assert fake.calls_by_kind()["bulk_ingest_status"] >= 3  # UploadComplete/InProgress before JobComplete
    assert {r["Title"] for r in fake.records("Contact")} == {"Later"}


# --- Bulk API 2.0 query -----------------------------------------------------------------------


def test_bulk2_query_pages_with_locator(fake: FakeSalesforce, sf: Salesforce) -> None:
    ids = _contacts(fake, 2500)
    pages = list(
        sf.bulk2.Contact.query("SELECT Id, Email, HasOptedOutOfEmail FROM Contact", max_records=1000, wait=0)
    )
    assert len(pages) == 3
    rows = [r for page in pages for r in _rows(page)]
    assert [r["Id"] for r in rows] == ids
    assert rows[0] == {"Id": ids[0], "Email": "user0@example.com", "HasOptedOutOfEmail": "false"}
    assert fake.calls_by_kind() == {"bulk_query_create": 1, "bulk_query_status": 1, "bulk_query_results": 3}

    # The raw headers simple-salesforce relies on.
    job_id = fake.query_jobs()[0]["id"]
    headers = {"Authorization": f"Bearer {fake.issue_access_token()}"}
    url = f"{fake.url}/services/data/v59.0/jobs/query/{job_id}/results"
    first = requests.get(url, params={"maxRecords": 2000}, headers=headers, verify=fake.ca_file, timeout=10)
    assert first.headers["Sforce-NumberOfRecords"] == "2000" and first.headers["Sforce-Locator"] != "null"
    last = requests.get(
        url,
        params={"maxRecords": 2000, "locator": first.headers["Sforce-Locator"]},
        headers=headers,
        verify=fake.ca_file,
        timeout=10,
    )
    assert last.headers["Sforce-NumberOfRecords"] == "500" and last.headers["Sforce-Locator"] == "null"
    assert last.text.startswith('"Id","Email","HasOptedOutOfEmail"\n')


# --- fault injection --------------------------------------------------------------------------


def test_fault_injection(fake: FakeSalesforce, sf: Salesforce) -> None:
    [cid] = _contacts(fake, 1)

    fake.fail_next_requests(2)
    for _ in range(2):
        with pytest.raises(SalesforceGeneralError) as exc:
            sf.query("SELECT Id FROM Contact")
        assert exc.value.status == 503
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 1

    fake.request_limit_exceeded(1)
    with pytest.raises(SalesforceRefusedRequest) as exc:
        sf.query("SELECT Id FROM Contact")
    assert exc.value.content == [
        {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
    ]
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 1
    assert [c["status"] for c in fake.calls] == [503, 503, 200, 403, 200]

    fake.fail_lock([cid], times=2)
    body = {"records": [{"attributes": {"type": "Contact"}, "id": cid, "Title": "t"}]}
    for _ in range(2):
        [res] = sf.restful("composite/sobjects", method="PATCH", json=body)
        assert res["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW"
    [res] = sf.restful("composite/sobjects", method="PATCH", json=body)
    assert res["success"] is True

    fake.set_latency(0.2)
    started = time.monotonic()
    sf.query("SELECT Id FROM Contact")
    assert time.monotonic() - started >= 0.2
    fake.clear_faults()


def test_data_endpoints_require_a_valid_bearer_token(fake: FakeSalesforce) -> None:
    bogus = Salesforce(instance_url=fake.url, session_id="bogus", session=fake.session())
    with pytest.raises(SalesforceExpiredSession) as exc:
        bogus.query("SELECT Id FROM Contact")
    assert exc.value.content == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]

    sf = fake.client()
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0
    fake.expire_access_tokens()
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Contact")
    # A per-request verify= works too (a Session's verify loses to REQUESTS_CA_BUNDLE in requests).
    resp = requests.get(f"{fake.url}/services/data/v59.0/limits/", verify=fake.ca_file, timeout=10)
    assert resp.status_code == 401


# --- OAuth ------------------------------------------------------------------------------------


def _token(fake: FakeSalesforce, **form: str) -> requests.Response:
    return fake.session().post(f"{fake.url}/services/oauth2/token", data=form, timeout=10)


def test_oauth_code_flow_with_pkce_then_refresh(fake: FakeSalesforce) -> None:
    redirect = "http://localhost:8765/callback"
    fake.register_oauth_client("hub-app", "s3cret", redirect_uris=[redirect])
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    session = fake.session()

    resp = session.get(
        f"{fake.url}/services/oauth2/authorize",
        params={
            "response_type": "code",
            "client_id": "hub-app",
            "redirect_uri": redirect,
            "state": "st-1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "scope": "api refresh_token",
        },
        allow_redirects=False,
        timeout=10,
    )
    assert resp.status_code == 302
    location = urlsplit(resp.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["state"] == "st-1"
    assert fake.authorization_requests[-1]["code_challenge"] == challenge
    assert fake.authorization_requests[-1]["code_challenge_method"] == "S256"

    common = {
        "grant_type": "authorization_code",
        "code": query["code"],
        "client_id": "hub-app",
        "client_secret": "s3cret",
        "redirect_uri": redirect,
    }
    bad = _token(fake, **common, code_verifier="wrong")
    assert bad.status_code == 400
    assert bad.json() == {"error": "invalid_grant", "error_description": "invalid code verifier"}

    good = _token(fake, **common, code_verifier=verifier)
    assert good.status_code == 200
    tokens = good.json()
    assert tokens["instance_url"] == fake.url and tokens["token_type"] == "Bearer"
    assert {"access_token", "refresh_token", "id", "issued_at", "signature"} <= set(tokens)
    assert _token(fake, **common, code_verifier=verifier).json()["error"] == "invalid_grant"  # single use

    sf = Salesforce(instance_url=tokens["instance_url"], session_id=tokens["access_token"], session=session)
    assert sf.query("SELECT Id FROM Contact")["done"] is True

    refreshed = _token(
        fake, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id="hub-app"
    )
    assert refreshed.status_code == 200 and "refresh_token" not in refreshed.json()
    assert fake.is_token_valid(refreshed.json()["access_token"])
    unknown = _token(fake, grant_type="refresh_token", refresh_token="nope", client_id="hub-app")
    assert unknown.json() == {"error": "invalid_grant", "error_description": "expired access/refresh token"}

    wrong_redirect = session.get(
        f"{fake.url}/services/oauth2/authorize",
        params={"response_type": "code", "client_id": "hub-app", "redirect_uri": "https://evil.example/cb"},
        allow_redirects=False,
        timeout=10,
    )
    assert wrong_redirect.status_code == 400
    assert fake.calls_by_kind()["token"] == 5


def test_jwt_bearer_flow(fake: FakeSalesforce) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fake.register_jwt_client("hub-consumer-key", public_pem, usernames=["svc@example.com"])

    # simple-salesforce's own JWT login, unmodified: login.salesforce.com is routed to the fake.
    sf = Salesforce(
        username="svc@example.com",
        consumer_key="hub-consumer-key",
        privatekey=private_pem,
        session=fake.session(route_login_domains=True),
    )
    assert sf.sf_instance == fake.url.removeprefix("https://")
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0

    def assertion(signing_key: Any = key, **claims: Any) -> str:
        payload = {
            "iss": "hub-consumer-key",
            "sub": "svc@example.com",
            "aud": "https://login.salesforce.com",
            "exp": int(time.time()) + 180,
            **claims,
        }
        return jwt.encode(payload, signing_key, algorithm="RS256")

    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = [
        (assertion(other_key), "invalid assertion"),
        (assertion(aud="https://evil.example"), "audience is invalid"),
        (assertion(exp=int(time.time()) - 10), "expired authorization code"),
        (assertion(sub="someone@example.com"), "user hasn't approved this consumer"),
        (assertion(iss="unregistered"), "client identifier invalid"),
        ("not-a-jwt", "invalid assertion"),
    ]
    for token, description in cases:
        resp = _token(fake, grant_type=grant, assertion=token)
        assert resp.status_code == 400
        assert resp.json() == {"error": "invalid_grant", "error_description": description}
    ok = _token(fake, grant_type=grant, assertion=assertion())
    assert ok.status_code == 200 and "refresh_token" not in ok.json()

    with pytest.raises(SalesforceAuthenticationFailed) as exc:
        Salesforce(
            username="svc@example.com",
            consumer_key="unregistered",
            privatekey=private_pem,
            session=fake.session(route_login_domains=True),
        )
    assert exc.value.code == "invalid_grant"


def test_revoke_refresh_and_access_tokens(fake: FakeSalesforce) -> None:
    session = fake.session()
    refresh = fake.issue_refresh_token(client_id="hub-app")
    access = _token(fake, grant_type="refresh_token", refresh_token=refresh, client_id="hub-app").json()[
        "access_token"
    ]
    sf = Salesforce(instance_url=fake.url, session_id=access, session=session)
    assert sf.query("SELECT Id FROM Contact")["totalSize"] == 0

    assert (
        session.post(f"{fake.url}/services/oauth2/revoke", data={"token": refresh}, timeout=10).status_code
        == 200
    )
    assert (
        _token(fake, grant_type="refresh_token", refresh_token=refresh, client_id="hub-app").json()["error"]
        == "invalid_grant"
    )
    with pytest.raises(SalesforceExpiredSession):  # sessions minted from the refresh token die with it
        sf.query("SELECT Id FROM Contact")

    direct = fake.issue_access_token()
    assert (
        session.post(f"{fake.url}/services/oauth2/revoke", data={"token": direct}, timeout=10).status_code
        == 200
    )
    with pytest.raises(SalesforceExpiredSession):
        Salesforce(instance_url=fake.url, session_id=direct, session=session).query("SELECT Id FROM Contact")
    unknown = session.post(f"{fake.url}/services/oauth2/revoke", data={"token": "nope"}, timeout=10)
    assert unknown.status_code == 400
    assert fake.calls_by_kind()["revoke"] == 3
