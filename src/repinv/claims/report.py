"""Write the ledger: claims.csv and claims.md (one row per claim), sensitivity.csv, and depth plots."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

from repinv.claims.ledger import COLUMNS, DEFAULT_RECIPE, Plan, judge, tagged
from repinv.claims.registry import Claim
from repinv.claims.rules import KEEP_DB, by_layer, mean_sd
from repinv.metrics import PSNR, axis_label
from repinv.reporting.tables import md_table, write_csv
from repinv.study import Run

LEDGER_CSV, LEDGER_MD = "claims.csv", "claims.md"  # one row per claim and its verdict; the page that shows them
MADE_WITH = "Made with "  # claims.md names the command that makes (and continues) the ledger after this

Conditions = dict[str, list[tuple[int, Run]]]


def _runs(conds: Conditions | None, out: Path) -> str:
    return "; ".join(sorted({str(r.folder.relative_to(out)) for rs in (conds or {}).values() for _, r in rs}))


def recipe_dependence(claim: Claim, p: Plan) -> tuple[str, list[dict]]:
    """Whether the claim's verdict changes across recipes, and one sensitivity row per recipe."""
    rows = []
    for (cid, recipe), conds in p.conditions.items():
        if cid == claim.id:
            verdict, measured, _ = judge(claim, conds, claim.id in p.out_of_budget)
            rows.append({"claim": claim.id, "recipe": recipe, "measured": measured, "verdict": verdict})
    decided: dict[str, list[str]] = {}
    for r in rows:
        if r["verdict"] in ("holds", "fails"):
            decided.setdefault(r["verdict"], []).append(r["recipe"])
    if not claim.sensitivity or sum(map(len, decided.values())) < 2:
        return "not tested", rows
    missing = len(rows) - sum(map(len, decided.values()))
    note = f"; {missing} recipes without a verdict" if missing else ""
    if len(decided) == 1:
        return f"no ({sum(map(len, decided.values()))} recipes{note})", rows
    return "yes: " + "; ".join(f"{v} under {', '.join(rs)}" for v, rs in decided.items()) + note, rows


def rows(claims: Sequence[Claim], p: Plan, images: Sequence[str], seeds: int, out: Path) -> tuple[list[dict], list[dict]]:
    """One ledger row per claim (default recipe) and the sensitivity rows."""
    table, sensitivity = [], []
    for claim in claims:
        conds = p.conditions.get((claim.id, DEFAULT_RECIPE))
        verdict, measured, rule = judge(claim, conds, claim.id in p.out_of_budget)
        dependent, recipe_rows = recipe_dependence(claim, p)
        sensitivity += recipe_rows
        table.append({"claim": claim.id, "text": claim.text, "study says": f"“{claim.quote}”", "figure": claim.figure,
                      "model source": claim.source, "images": ", ".join(Path(i).name for i in images), "seeds": seeds,
                      "measured": measured, "rule": rule, "verdict": verdict,
                      "recipe-dependent": dependent, "runs": _runs(conds, out)})
    return table, sensitivity


def write_md(path: Path, budget: str, table: list[dict], sensitivity: list[dict], plots: list[Path], command: str) -> Path:
    """claims.md: the command that makes it, the ledger, the verdict per recipe, and the depth plots."""
    counts = {v: sum(r["verdict"] == v for r in table) for v in dict.fromkeys(r["verdict"] for r in table)}
    lines = [f"# Does the study reproduce? (budget: {budget})", "",
             ", ".join(f"{n} {v}" for v, n in counts.items()), "",
             "Measured: mean ± sd over seeds and images (and layers, where a rule compares two conditions layer by layer); "
             "each rule decides on the mean (thresholds in repinv/claims/rules.py).", "",
             f"{MADE_WITH}`{command}` (the same command continues it; with --report-only it judges what has run).", "",
             *md_table(table, [c for c in COLUMNS if c != "runs"]), "", "## Verdict per recipe", "",
             *md_table(sensitivity, ["claim", "recipe", "measured", "verdict"]), "", "## Run folders", "",
             *(f"- {r['claim']}: {r['runs'] or '(none)'}" for r in table), "",
             *(f"![{p.stem}](plots/{p.name})" for p in plots)]
    path.write_text("\n".join(lines) + "\n")
    return path


def depth_plot(claim: Claim, series: dict[str, list[dict]], out: Path) -> Path | None:
    """PSNR against depth, one line per condition and recipe, mean ± sd band over seeds and images."""
    layers_of = {name: by_layer([r for r in records if r.get(PSNR) is not None]) for name, records in series.items()}
    if not any(len(s) > 1 for s in layers_of.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for name, layers in layers_of.items():
        stats = [mean_sd(v) for v in layers.values()]
        x = range(len(stats))
        ax.plot(x, [m for m, _ in stats], marker="o", label=name)
        ax.fill_between(x, [m - s for m, s in stats], [m + s for m, s in stats], alpha=0.25)
        ax.set_xticks(list(x), list(layers), rotation=45, fontsize=7)
    ax.axhline(KEEP_DB, ls="--", lw=0.8, color="grey", label=f"{KEEP_DB:g} dB")
    ax.set(xlabel="layer (depth order)", ylabel=axis_label(PSNR), title=f"{claim.id} ({claim.source})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{claim.id}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_series(claim: Claim, p: Plan) -> dict[str, list[dict]]:
    """Each condition's records under every recipe the claim was judged with (the default only when it is not sensitive)."""
    recipes = [(recipe, conds) for (cid, recipe), conds in p.conditions.items() if cid == claim.id]
    series = {}
    for recipe, conds in recipes:
        if judge(claim, conds)[0] not in ("holds", "fails"):
            continue
        for name, rs in conds.items():
            label = name if len(recipes) == 1 else f"{name}, {recipe}"
            series[label] = [x for seed, r in rs for x in tagged(seed, r)]
    return series


def judged(out: Path) -> list[str]:
    """The claim ids the ledger at `out` holds verdicts for ([] where there is none yet)."""
    if not (out / LEDGER_CSV).is_file():
        return []
    with open(out / LEDGER_CSV, newline="") as f:
        return list(dict.fromkeys(r["claim"] for r in csv.DictReader(f)))


def made_by(out: Path) -> str | None:
    """The command that made the ledger at `out`, as its claims.md names it (None where there is none)."""
    md = out / LEDGER_MD
    found = re.search(rf"^{MADE_WITH}`(.+?)`", md.read_text(), re.M) if md.is_file() else None
    return found and found.group(1)


def write(out: Path, budget: str, claims: Sequence[Claim], p: Plan, images: Sequence[str], seeds: int,
          command: str) -> tuple[Path, Path]:
    """claims.csv, claims.md, sensitivity.csv and plots/<claim>.png under `out`."""
    table, sensitivity = rows(claims, p, images, seeds, out)
    plots = [path for claim in claims if claim.plot and (path := depth_plot(claim, plot_series(claim, p), out / "plots"))]
    write_csv(out / "sensitivity.csv", sensitivity, ["claim", "recipe", "measured", "verdict"])
    return write_csv(out / LEDGER_CSV, table, COLUMNS), write_md(out / LEDGER_MD, budget, table, sensitivity, plots, command)
