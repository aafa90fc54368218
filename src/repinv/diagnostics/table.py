"""Diagnostics records as a CSV table: one row per record, lists as space-separated numbers."""

from __future__ import annotations

import csv
from pathlib import Path

from repinv.reporting.tables import write_csv


def write_table(records: list[dict], path: Path) -> Path:
    """Write `records` (columns: every key, in first-seen order, `error` last) to `path` and return it."""
    cell = lambda v: " ".join(f"{x:.6g}" for x in v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return write_csv(path, [{k: cell(v) for k, v in r.items()} for r in records])


def _value(text: str):
    """A cell of `write_table` as it was: a boolean, a whole or real number, numbers (a list), else the text."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return [float(x) for x in text.split()] if " " in text else text
    except ValueError:
        return text


def read_table(path: Path) -> list[dict]:
    """The records of a table `write_table` wrote, their numbers and booleans as such (a cell left empty: absent)."""
    with open(path, newline="") as f:
        return [{k: _value(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
