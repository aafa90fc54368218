"""Diagnostics records as a CSV table: one row per record, lists as space-separated numbers."""

from __future__ import annotations

import csv
from pathlib import Path


def write_table(records: list[dict], path: Path) -> Path:
    """Write `records` (columns: every key, in first-seen order) to `path` and return it."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    cell = lambda v: " ".join(f"{x:.6g}" for x in v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: cell(v) for k, v in r.items()} for r in records)
    return path
