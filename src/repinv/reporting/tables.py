"""The tables repinv's tools write: CSV files and markdown tables, one row per dict."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path


def columns(rows: list[dict], first: Sequence[str] = ()) -> list[str]:
    """`first`, then every other key of the rows in first-seen order, `error` (if any) last."""
    keys = dict.fromkeys(k for row in rows for k in row)
    return [*first, *(k for k in keys if k not in first and k != "error"), *(["error"] if "error" in keys else [])]


def write_csv(path: Path, rows: list[dict], header: Sequence[str] | None = None) -> Path:
    """`rows` as a CSV file at `path` under `header` (default: `columns(rows)`); returns the path."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(header if header is not None else columns(rows)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def md_table(rows: list[dict], header: Sequence[str]) -> list[str]:
    """The lines of a markdown table of `rows` under `header` (a missing cell is empty, `|` in a cell escaped)."""
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(cell(r.get(c, "")) for c in header) + " |" for r in rows)]
