"""Diagnostics records as a CSV table: one row per record, lists as space-separated numbers."""

from __future__ import annotations

from pathlib import Path

from repinv.reporting.tables import write_csv


def write_table(records: list[dict], path: Path) -> Path:
    """Write `records` (columns: every key, in first-seen order, `error` last) to `path` and return it."""
    cell = lambda v: " ".join(f"{x:.6g}" for x in v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return write_csv(path, [{k: cell(v) for k, v in r.items()} for r in records])
