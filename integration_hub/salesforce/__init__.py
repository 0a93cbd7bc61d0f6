"""Outbound Salesforce: update-only sync of report rows into any Salesforce object.

* `auth`: login hosts, the encrypted refresh-token store, OAuth 2.0 (code + PKCE) and JWT bearer.
* `client`: simple-salesforce with explicit timeouts, retries and a per-kind call count.
* `validation`: the mapping checked against `describe()` before anything is sent.
* `sync`: stage, diff, match, send and book-keep one run (all set-based work in DuckDB).
* `factory`: the Dagster asset, job and schedule; `check`: the CLI hooks; `cli`: connect/disconnect.
"""
