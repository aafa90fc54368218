"""The committed CPU ledger (docs/study/cpu/) reads back: every row has a verdict, and recomputing the ledger
from the committed run folders' metrics.json gives the committed verdicts and measured numbers."""

from __future__ import annotations

import csv
import shutil

import pytest

from conftest import REPO
from repinv.claims.cli import main

STUDY = REPO / "docs" / "study" / "cpu"
VERDICTS = {"holds", "fails", "needs trained weights", "GPU budget", "pending", "incomplete runs"}


def rows(folder) -> list[dict]:
    return list(csv.DictReader(open(folder / "claims.csv")))


pytestmark = pytest.mark.skipif(not (STUDY / "claims.csv").is_file(), reason="no committed CPU ledger")


def test_every_committed_claim_has_a_verdict_and_a_quote():
    table = rows(STUDY)
    assert table and all(r["verdict"] in VERDICTS for r in table), {r["claim"]: r["verdict"] for r in table}
    assert all(r["study says"].startswith("“") for r in table)
    assert any(r["verdict"] in {"holds", "fails"} for r in table)
    assert all(r["measured"] for r in table), "a row says what it measured, or why nothing and how to run it"


def test_the_committed_verdicts_follow_from_the_committed_runs(tmp_path):
    copy = tmp_path / "cpu"
    shutil.copytree(STUDY, copy)
    for p in list(copy.glob("claims.*")) + [copy / "sensitivity.csv"]:
        p.unlink()
    assert main(["--budget", "cpu", "--out", str(copy), "--report-only"]) == 0
    committed = {r["claim"]: r for r in rows(STUDY)}
    recomputed = {r["claim"]: r for r in rows(copy)}
    assert recomputed.keys() == committed.keys()
    for claim, row in recomputed.items():
        assert (row["verdict"], row["measured"], row["recipe-dependent"]) == \
            (committed[claim]["verdict"], committed[claim]["measured"], committed[claim]["recipe-dependent"]), claim
    assert list(csv.DictReader(open(copy / "sensitivity.csv"))) == list(csv.DictReader(open(STUDY / "sensitivity.csv")))
