"""Plan every claim's runs, run them as `repinv` runs, judge each claim and write the ledger.

Each run is `repinv ... hydra.run.dir=<out>/runs/<claim>/<recipe>/<condition>/seed<k>`: one after
another in this process through `repinv.run` (no interpreter start per run), or with `--jobs N`
each its own `python -m repinv` process. The run folders are the same either way, so every number
in claims.csv traces to a run folder (metrics.json, PNGs, W&B run). Runs with
the same overrides are made once and shared by the claims that need them; a folder whose run
already finished with the same command is reused, so an interrupted ledger continues.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import repinv
from repinv.claims.registry import Claim

NEEDS_WEIGHTS = "needs trained weights"
DEFAULT_RECIPE = "default (linear lr)"
RUN_FAILED = "run failed"
NO_NORM = ["model.mean=[0,0,0]", "model.std=[1,1,1]"]
COLUMNS = ["claim", "text", "figure", "model source", "images", "seeds", "measured", "rule", "verdict",
           "recipe-dependent", "runs"]


@dataclass(frozen=True)
class Budget:
    """How big the ledger's runs are: the study's steps on the study's models, or tiny and short.

    `lrs` are the constant learning rates of the sensitivity check (each also without input
    normalisation); the quick budget tries one, so every recipe kind is still exercised.
    """

    name: str
    steps: int
    images: tuple[str, ...]
    lrs: tuple[float, ...]


BUDGETS = {"study": Budget("study", 1500, ("chelsea", "astronaut", "coffee"), (0.01, 0.05, 0.2, 0.5)),
           "quick": Budget("quick", 10, ("chelsea",), (0.5,))}


def recipes(lrs: Sequence[float]) -> dict[str, list[str]]:
    """The default recipe (decaying lr) and each constant lr, each with and without input normalisation."""
    base = {DEFAULT_RECIPE: []} | {f"constant lr={lr:g}": ["scheduler=constant", f"optimizer.lr={lr:g}"] for lr in lrs}
    return {k: v for name, o in base.items() for k, v in ((name, o), (f"{name}, no input norm", [*o, *NO_NORM]))}


@dataclass
class Job:
    """One repinv run: its folder, overrides, seed, and whether it loads trained weights."""

    folder: Path
    overrides: list[str]
    seed: int
    trained: bool
    status: str = "pending"
    records: list[dict] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.folder.parent / f"{self.folder.name}.log"


def slug(text: str) -> str:
    """A folder name: runs of other characters than letters, digits, `.` and `-` become one `_`."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def quote(value) -> str:
    """A value quoted for Hydra's override parser (spaces, commas, `=` and quotes survive)."""
    return "'" + str(value).replace("'", "\\'") + "'"


def image_override(images: Sequence[str]) -> str:
    """`image=[...]` with each name or path quoted, so paths with spaces or commas survive Hydra's parser."""
    return f"image=[{','.join(map(quote, images))}]"


@dataclass
class Plan:
    """Every job of the ledger, and for each (claim, recipe) the jobs of each condition."""

    jobs: dict[tuple[str, ...], Job] = field(default_factory=dict)
    conditions: dict[tuple[str, str], dict[str, list[Job]]] = field(default_factory=dict)


def plan(claims: Sequence[Claim], budget: Budget, out: Path, seeds: int, images: Sequence[str], lrs: Sequence[float],
         weights, extra: Sequence[str], steps: int | None = None) -> Plan:
    """The jobs each claim needs. Claims whose trained runs have no weights get none (needs trained weights)."""
    p = Plan()
    for claim in claims:
        loads = {name: weights(claim.source, claim.overrides(name, budget.name)) for name, run in claim.runs.items() if run.trained}
        if any(v is None for v in loads.values()):
            continue
        for recipe, recipe_overrides in (recipes(lrs) if claim.sensitivity else {DEFAULT_RECIPE: []}).items():
            conds = p.conditions.setdefault((claim.id, recipe), {})
            for name in claim.runs:
                for seed in range(seeds):
                    overrides = [*claim.overrides(name, budget.name), image_override(images), f"steps={steps or budget.steps}",
                                 f"seed={seed}", *recipe_overrides, *loads.get(name, []), *extra]
                    folder = out / "runs" / claim.id / slug(recipe) / name / f"seed{seed}"
                    job = p.jobs.setdefault(tuple(overrides), Job(folder, overrides, seed, name in loads))
                    conds.setdefault(name, []).append(job)
    return p


def launch(args: list[str], log: Path, in_process: bool) -> str | None:
    """Run `repinv ARGS`, its output to `log`: in this process, or as its own process. Why it failed, or None."""
    with open(log, "w") as f:
        if not in_process:
            code = subprocess.run([sys.executable, "-m", "repinv", *args], stdout=f, stderr=subprocess.STDOUT,
                                  env=os.environ.copy()).returncode
            return f"exit {code}; see {log}" if code else None
        try:
            with redirect_stdout(f), redirect_stderr(f):
                repinv.run(args)
        except Exception as err:  # any failure of one run is that run's verdict, not the ledger's end
            traceback.print_exc(file=f)
            return f"{type(err).__name__}: {' '.join(str(err).split())}; see {log}"
    return None


def run_job(job: Job, in_process: bool = True) -> Job:
    """Run (or reuse) one job; read its records, tagged with seed and filter structure."""
    args = [*job.overrides, f"hydra.run.dir={quote(job.folder)}"]
    done = job.folder / "command.txt"
    if not (done.is_file() and done.read_text() == " ".join(args)):
        job.folder.parent.mkdir(parents=True, exist_ok=True)
        failure = launch(args, job.log, in_process)
        if failure or not (job.folder / "metrics.json").is_file():
            job.status = failure or f"no metrics.json written; see {job.log}"
            return job
        done.write_text(" ".join(args))
    records = json.loads((job.folder / "metrics.json").read_text())
    if job.trained and not all(r.get("trained") for r in records):
        job.status = f"weights were given but metrics.json says trained=false: {job.folder}"
        return job
    filters = job.folder / "filters.json"
    structured = json.loads(filters.read_text())["structured"] if filters.is_file() else None
    job.records = [{**r, "seed": job.seed, "structured": structured} for r in records]
    job.status = "finished"
    return job


def execute(p: Plan, jobs: int) -> None:
    """Run every job: one after another in this process, or `jobs` at once, each its own process."""
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for job in pool.map(partial(run_job, in_process=jobs <= 1), p.jobs.values()):
            print(f"finished: {job.folder}" if job.status == "finished" else f"{RUN_FAILED}: {job.status}", file=sys.stderr)


def judge(claim: Claim, conds: dict[str, list[Job]] | None) -> tuple[str, str, str]:
    """The claim's verdict (holds, fails, needs trained weights, run failed), what was measured, and the rule."""
    if conds is None:
        return NEEDS_WEIGHTS, "", ""
    failed = [j.status for js in conds.values() for j in js if j.status != "finished"]
    if failed:
        return RUN_FAILED, failed[0], ""
    v = claim.rule({name: [r for j in js for r in j.records] for name, js in conds.items()})
    return ("holds" if v.holds else "fails"), v.measured, v.rule
