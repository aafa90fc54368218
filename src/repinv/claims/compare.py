"""Ledgers side by side: one row per claim and recipe, one column per ledger folder, each cell its verdict and measure.

Ledgers of one budget made on other photographs, precisions or machines answer whether a verdict depends on them.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from repinv import study
from repinv.claims.ledger import PRECISION, default_precision
from repinv.errors import RepinvError
from repinv.reporting.tables import md_table

ZERO_SD = re.compile(r" ± 0\.0+(?!\d)")  # a whole "± 0.0" or "± 0.00", never the start of "± 0.04"


def precisions(root: Path) -> str:
    """The precisions the ledger's runs stepped in, from their recorded commands (the app config's when unset)."""
    found = {study.value(c, PRECISION) for c in study.recorded(root)}
    if None in found:
        found = found - {None} | {default_precision()}
    return ", ".join(sorted(found)) or "no runs"


def one_sample(row: dict) -> bool:
    """Whether a claims.csv row was measured on one seed and one photograph (its sd of one value reads 0)."""
    return row.get("seeds") == "1" and len(row.get("images", "").split(", ")) == 1


def read(root: Path) -> tuple[str, dict[tuple[str, str], str]]:
    """What a ledger's column header says of it (photographs, precision of its runs) and its cells by (claim, recipe)."""
    if not (root / "sensitivity.csv").is_file() or not (root / "claims.csv").is_file():
        raise RepinvError(f"--compare {root}: no ledger there (sensitivity.csv and claims.csv are missing). Give folders "
                          "that repinv-claims wrote, e.g. --compare docs/study/cpu docs/study/cpu-astronaut.")
    with open(root / "claims.csv", newline="") as f:
        first = next(csv.DictReader(f), {})
    single = one_sample(first)
    with open(root / "sensitivity.csv", newline="") as f:
        cells = {(r["claim"], r["recipe"]): f"{r['verdict']}: {ZERO_SD.sub('', r['measured']) if single else r['measured']}"
                 for r in csv.DictReader(f)}
    return f"{first.get('images', '')}; {precisions(root)}", cells


def names(roots: list[Path]) -> list[str]:
    """Each ledger's name in its column header: its folder's name, or the path as given where two folders share one
    (hostA/cpu, hostB/cpu), so that no column takes another's place."""
    if len({root.resolve() for root in roots}) < len(roots):
        raise RepinvError(f"--compare {' '.join(map(str, roots))} names one ledger folder twice; give each folder once.")
    short = [root.name for root in roots]
    return short if len(set(short)) == len(short) else [str(root) for root in roots]


def comparison(roots: list[Path], command: str) -> str:
    """The markdown page: the command that made it, then the table (a cell is empty where a ledger lacks the row)."""
    columns = {}
    for name, root in zip(names(roots), roots):
        about, cells = read(root)
        columns[f"{name} ({about})"] = cells
    keys = list(dict.fromkeys(key for cells in columns.values() for key in cells))
    table = [{"claim": claim, "recipe": recipe, **{name: cells.get((claim, recipe), "") for name, cells in columns.items()}}
             for claim, recipe in keys]
    lines = ["# Ledgers side by side", "",
             "Each cell: the verdict and what was measured (mean ± sd as in each ledger's claims.md; no sd where a ledger "
             "measured one seed on one photograph and it reads 0). "
             "A column names the ledger folder, its photographs and the precision its runs stepped in.", "",
             f"Made with `{command}`.", "", *md_table(table, ["claim", "recipe", *columns])]
    return "\n".join(lines) + "\n"
