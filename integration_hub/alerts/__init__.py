"""Alerts on failed, partial, stale and failing-check integrations (see docs/operations.md)."""
