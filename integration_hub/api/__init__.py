"""The End User Update API: real-time inbound attributes over HTTP, durable before acknowledged.

- `server`: the FastAPI app (`POST /v1/end-users`, `GET /v1/batches/{id}`, `GET /healthz`).
- `settings`: the server's limits; `protocol`: its HTTP protocol (request head size and deadline).
- `request_body`: Content-Type, gzip, body size and pace; `document`: the body as bounded JSON.
- `openapi`: the OpenAPI document (every answer, the request limits).
- `validation`: per-record validation that agrees with the DuckDB casts of `core.sql`.
- `batches`: the landing store (fsync'd batch files, status files, idempotency keys).
- `tokens`: bearer and integration tokens (SQLite, sha256 only).
- `applying` / `factory`: the Dagster side that applies landed batches to DuckDB.
- `cli`: `integration-hub api | tokens | endpoint`; `check`: hooks for `check` and `run --dry-run`.
"""
