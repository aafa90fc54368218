"""The committed ledgers (docs/study/*/) read back: every row has a verdict, and recomputing each ledger
from its committed run folders' metrics.json gives the committed verdicts and measured numbers."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil

import pytest

from conftest import REPO
from repinv.claims.cli import main
from repinv.claims.registry import CLAIMS

LEDGERS = sorted(p.parent for p in (REPO / "docs" / "study").glob("*/claims.csv"))
VERDICTS = {"holds", "fails", "needs trained weights", "GPU budget", "pending", "incomplete runs"}


def rows(folder) -> list[dict]:
    return list(csv.DictReader(open(folder / "claims.csv")))


def arguments(folder) -> list[str]:
    """The repinv-claims arguments that claims.md says made the ledger (a later --out takes the ledger elsewhere)."""
    return shlex.split(re.search(r"Made with `(.+?)`", (folder / "claims.md").read_text()).group(1))[1:]


def test_the_ledgers_the_readme_cites_are_committed():
    assert {"cpu", "cpu-bf16", "cpu-seeds", "cpu-astronaut", "cpu-coffee", "gpu-h200"} <= {p.name for p in LEDGERS}


@pytest.mark.parametrize("study", LEDGERS, ids=lambda p: p.name)
def test_every_committed_claim_has_a_verdict_and_a_quote(study):
    table = rows(study)
    assert table and all(r["verdict"] in VERDICTS for r in table), {r["claim"]: r["verdict"] for r in table}
    assert all(r["study says"].startswith("“") for r in table)
    assert any(r["verdict"] in {"holds", "fails"} for r in table)
    assert all(r["measured"] for r in table), "a row says what it measured, or why nothing and how to run it"
    trained = {c.id for c in CLAIMS if c.trained}
    unjudged = [r for r in table if r["claim"] in trained and r["verdict"] not in {"holds", "fails"}]
    assert all("--pretrained or --checkpoint" in r["measured"] for r in unjudged), \
        "an unjudged trained claim says how to get weights"


@pytest.mark.parametrize("study", LEDGERS, ids=lambda p: p.name)
def test_the_committed_verdicts_follow_from_the_committed_runs(study, tmp_path):
    copy = tmp_path / study.name
    shutil.copytree(study, copy)
    for p in list(copy.glob("claims.*")) + [copy / "sensitivity.csv"]:
        p.unlink()
    assert main([*arguments(study), "--out", str(copy), "--report-only"]) == 0
    committed = {r["claim"]: r for r in rows(study)}
    recomputed = {r["claim"]: r for r in rows(copy)}
    assert recomputed.keys() == committed.keys()
    for claim, row in recomputed.items():
        assert (row["verdict"], row["measured"], row["recipe-dependent"]) == \
            (committed[claim]["verdict"], committed[claim]["measured"], committed[claim]["recipe-dependent"]), claim
    assert list(csv.DictReader(open(copy / "sensitivity.csv"))) == list(csv.DictReader(open(study / "sensitivity.csv")))


def test_the_committed_comparison_is_what_its_command_prints(capsys, monkeypatch):
    page = (REPO / "docs" / "study" / "compare.md").read_text()
    monkeypatch.chdir(REPO)
    assert main(shlex.split(re.search(r"Made with `(.+?)`", page).group(1))[1:]) == 0
    assert capsys.readouterr().out == page


COSTS = sorted(p.parent for p in (REPO / "docs" / "study").glob("*/cost.json"))


def committed_costs(folder):
    from repinv.claims.cost import NetworkCost

    return [NetworkCost(**{**c, "network": tuple(c["network"])}) for c in json.loads((folder / "cost.json").read_text())]


@pytest.mark.parametrize("folder", COSTS, ids=lambda p: p.name)
def test_a_committed_cost_renders_its_counts_and_names_its_ledgers_command(folder):
    from repinv.claims.cost import cost_table

    made_with, _, table = (folder / "cost.md").read_text().partition("\n\n")
    peaks = dict((name, float(tflops)) for name, tflops in re.findall(r"--peak '([^=']+)=([0-9.]+)'", made_with))
    assert table == cost_table(committed_costs(folder), peaks)
    assert f"Made with `repinv-claims {shlex.join(arguments(folder))}" in made_with


def test_the_readme_quotes_the_committed_cost_of_the_gpu_ledger():
    costs = committed_costs(REPO / "docs" / "study" / "gpu-h200")
    assert sum(c.runs for c in costs) == 156
    total = sum(c.flops for c in costs) / 1e15
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"it counts {total:.1f} PFLOP" in readme
    assert f"(67 TFLOP/s) at least {total * 1e3 / 67 / 60:.1f} minutes" in readme
