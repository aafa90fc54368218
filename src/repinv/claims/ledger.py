"""Plan every claim's runs, run them as `repinv` runs, judge each claim and write the ledger.

The runs are the study runner's (`repinv.study`): each in `<out>/runs/<model>-seed<k>-<hash>/`,
named by its overrides, made once and shared by every claim (and every other tool) that needs
it; one after another in this process, or with `--jobs N` each its own `python -m repinv`
process. Every number in claims.csv traces to a run folder (metrics.json, PNGs, command.txt);
a finished folder is reused and an interrupted one resumes, so an interrupted ledger continues.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from repinv import study
from repinv.claims import rules
from repinv.claims.registry import CLAIMS, Claim
from repinv.conf import respell_all
from repinv.errors import RepinvError, known_names
from repinv.metrics import PSNR
from repinv.objectives import PROB, RANK
from repinv.reporting.callbacks import read_filters
from repinv.study import Run, image_override

NEEDS_WEIGHTS = "needs trained weights"
WEIGHTS = "--pretrained or --checkpoint [MODEL=]FILE"  # how a ledger gets trained weights
GPU_BUDGET = "GPU budget"
DEFAULT_RECIPE = "default (linear lr)"
RUN_FAILED = "run failed"
DIVERGED = "run diverged"
PENDING = "pending"
INCOMPLETE = "incomplete runs"
NO_NORM = ["model.mean=[0,0,0]", "model.std=[1,1,1]"]
BF16 = "precision=bf16"
PRECISION = study.key(BF16)
MEASURES = (PSNR, PROB, RANK)  # what the rules read from a record, each a finite number in a run that converged
COLUMNS = ["claim", "text", "study says", "figure", "model source", "images", "seeds", "measured", "rule", "verdict",
           "recipe-dependent", "runs"]


@dataclass(frozen=True)
class Budget:
    """How big the ledger's runs are, and which recipes judge a recipe-sensitive claim.

    `lrs` are the constant learning rates of the sensitivity check; `norms` says whether each runs
    with input normalisation (True), without it (False), or both. `bf16` steps in bfloat16 where
    the CPU or GPU runs it natively (targets and final metrics stay fp32).
    """

    name: str
    steps: int
    images: tuple[str, ...]
    lrs: tuple[float, ...]
    seeds: int = 3
    norms: tuple[bool, ...] = (True, False)
    sources: tuple[str, ...] = ("timm", "torchvision")
    bf16: bool = False

    def recipes(self, lrs: Sequence[float] | None = None) -> dict[str, list[str]]:
        """The default recipe (decaying lr, input normalised), then each constant lr under each of `norms`;
        with both norms the default also runs without normalisation. No constant lr (`--lrs none`) is no
        sensitivity check: the default recipe alone."""
        lrs = self.lrs if lrs is None else lrs
        if not lrs:
            return {DEFAULT_RECIPE: []}
        base = {DEFAULT_RECIPE: []} | {f"constant lr={lr:g}": ["scheduler=constant", f"optimizer.lr={lr:g}"] for lr in lrs}
        out = {}
        for name, o in base.items():
            for norm in self.norms if name != DEFAULT_RECIPE or len(self.norms) > 1 else (True,):
                out[name if norm else f"{name}, no input norm"] = o if norm else [*o, *NO_NORM]
        return out

    def overrides(self, root: Path, extra: Sequence[str] = ()) -> list[str]:
        """What every run of this budget's ledger at `root` ends with: the extra overrides, after the budget's precision
        where it picks one. A bf16 budget steps in bf16 where this CPU runs it natively, unless `extra` names a
        precision or the ledger already holds runs, whose precision it keeps (so a ledger read or continued on another
        CPU plans the runs it holds). There `extra`'s fp32 (the config's default) is left out of the runs, so the
        command a ledger made in fp32 records, which names its precision, plans the runs it made."""
        if not self.bf16:
            return list(extra)
        asked = study.value(extra, PRECISION)
        if asked is not None:
            return [o for o in extra if study.key(o) != PRECISION] if asked == default_precision() else list(extra)
        from repinv.models.packed import native_bf16

        made = study.recorded(root)
        bf16 = any(BF16 in c for c in made) if made else native_bf16()
        return [*([BF16] if bf16 else []), *extra]

    def precision(self, root: Path, extra: Sequence[str] = ()) -> str:
        """The precision the runs of this budget's ledger at `root` step in, with these extra overrides."""
        return study.value(self.overrides(root, extra), PRECISION) or default_precision()


def default_precision() -> str:
    """The precision a run steps in where no override names one (the app config's)."""
    from omegaconf import OmegaConf

    from repinv.cli import CONFIG_DIR

    return str(OmegaConf.load(Path(CONFIG_DIR) / "config.yaml")[PRECISION])


BUDGETS = {"study": Budget("study", 1500, ("chelsea", "astronaut", "coffee"), (0.01, 0.05, 0.2, 0.5)),
           "cpu": Budget("cpu", 1500, ("chelsea",), (0.1,), seeds=1, norms=(False,), sources=("timm",), bf16=True),
           "quick": Budget("quick", 10, ("chelsea",), (0.5,))}


@dataclass
class Plan:
    """Every run of the ledger, and for each (claim, recipe) the runs of each condition with their seeds."""

    runs: dict[tuple[str, ...], Run] = field(default_factory=dict)
    conditions: dict[tuple[str, str], dict[str, list[tuple[int, Run]]]] = field(default_factory=dict)
    out_of_budget: set[str] = field(default_factory=set)


# The flags that set what a ledger plans per run; an extra override of the same key would replace it.
FLAGS = {"image": "--image", "steps": "--steps", "seed": "--seeds", "optimizer.lr": "--lrs", "model.checkpoint": "--checkpoint",
         "model.pretrained": "--pretrained", "model.weights": "--weights"}


def plan(claims: Sequence[Claim], budget: Budget, out: Path, seeds: int, images: Sequence[str], lrs: Sequence[float] | None,
         weights, extra: Sequence[str], steps: int | None = None, flags: Mapping[str, str] = FLAGS) -> Plan:
    """The runs each claim needs. Claims whose trained runs have no weights get none (needs trained weights);
    claims whose models the budget does not hold are out of budget. An extra override of a planned key is refused,
    naming the flag of `flags` that sets it."""
    p, every_run, planned = Plan(), budget.overrides(out, extra), set()
    for claim in claims:
        if not claim.fits(budget.name):
            p.out_of_budget.add(claim.id)
            continue
        loads = {name: weights(claim.source, claim.overrides(name, budget.name))
                 for name, run in claim.runs.items() if run.trained}
        if any(v is None for v in loads.values()):
            continue
        for recipe, recipe_overrides in (budget.recipes(lrs) if claim.sensitivity else {DEFAULT_RECIPE: []}).items():
            conds = p.conditions.setdefault((claim.id, recipe), {})
            for name in claim.runs:
                for seed in range(seeds):
                    # The claim's own overrides after the budget's steps: a condition may fix its own (105,000 steps).
                    head = [image_override(images), f"steps={budget.steps if steps is None else steps}", f"seed={seed}"]
                    fixed = [*claim.overrides(name, budget.name), *recipe_overrides, *loads.get(name, [])]
                    planned.update(map(study.key, [*head, *fixed]))
                    run = study.run_for(out, [*head, *fixed, *every_run])
                    conds.setdefault(name, []).append((seed, p.runs.setdefault(run.overrides, run)))
    refuse_planned(extra, planned, flags)
    return p


def refuse_planned(extra: Sequence[str], planned: set[str], flags: Mapping[str, str] = FLAGS, who: str = "the ledger",
                   per: str = "per claim, seed and recipe") -> None:
    """Refuse an extra override of a key `who` sets in its runs (`planned`): as the last value it would win in every
    run, so the conditions (seeds, models, recipes; a figure's panels) would be one run and judged from it. The error
    names the flag of `flags` that sets the key, if one does."""
    planned = set(respell_all(planned))
    for override in respell_all(extra):
        name = study.key(override)
        if name in planned:
            how = f"use {flags[name]} instead" if name in flags else "leave it out"
            raise RepinvError(f"{override}: {who} sets {name} in its runs, {per}, and an extra override would replace it "
                              f"in every run; {how}. Extra overrides are for what {who} leaves open, e.g. "
                              "precision=bf16 trainer.accelerator=gpu.")


def tagged(seed: int, run: Run) -> list[dict]:
    """A run's records tagged with its seed and its input filters' structure (filters.json)."""
    stats = read_filters(run.folder) or {}
    return [{**r, "seed": seed, "structured": stats.get("structured")} for r in run.records]


def trained_check(p: Plan) -> None:
    """A run given trained weights whose records say untrained fails (the weights did not load)."""
    for run in p.runs.values():
        if any(o.startswith(("model.checkpoint=", "model.pretrained=true", "model.weights=")) for o in run.overrides):
            study.expect_trained(run)


def execute(p: Plan, jobs: int, launch_missing: bool = True) -> None:
    """Make every run (reusing finished folders, resuming interrupted ones), then check trained runs loaded weights.

    `launch_missing=False` judges only what has finished; the claims of runs not made yet are `pending`.
    """
    study.execute(p.runs.values(), jobs, launch_missing)
    trained_check(p)


def judge(claim: Claim, conds: dict[str, list[tuple[int, Run]]] | None, out_of_budget: bool = False) -> tuple[str, str, str]:
    """The claim's verdict (holds, fails, needs trained weights, GPU budget, run failed, run diverged, pending,
    incomplete runs), what was measured, and the rule."""
    if out_of_budget:
        weights = f" with trained weights ({WEIGHTS})" if claim.trained else ""
        return GPU_BUDGET, f"not run at this budget: --budget study runs it{weights}", ""
    if conds is None:
        return NEEDS_WEIGHTS, f"not run: trained weights come with {WEIGHTS}", ""
    if any(r.status == study.NOT_MADE for rs in conds.values() for _, r in rs):
        return PENDING, "runs not made yet: rerun the same command to make them", ""
    failed = [r.status for rs in conds.values() for _, r in rs if not r.ok]
    if failed:
        return RUN_FAILED, failed[0], ""
    for run in (r for rs in conds.values() for _, r in rs):
        if broken := [x for x in run.records if not converged(x)]:
            where = ", ".join(f"{x.get('layer')} on {x.get('image')}" for x in broken)
            return DIVERGED, (f"{run.folder.parent.name}/{run.folder.name} diverged or measured a non-finite number at "
                              f"{where} (see {run.log}): a reconstruction that blew up is no measurement, so this "
                              "recipe gives the claim no verdict"), ""
    try:
        v = claim.rule({name: [x for seed, r in rs for x in tagged(seed, r)] for name, rs in conds.items()})
    except rules.Unmeasured as e:
        return INCOMPLETE, f"{e}: delete those run folders and rerun the same command to remake them", ""
    return ("holds" if v.holds else "fails"), v.measured, v.rule


def converged(record: Mapping) -> bool:
    """Whether a record's target ran to the end with a finite number for every measure a rule reads (metrics.json
    writes a non-finite number as null)."""
    def finite(value) -> bool:
        return value is not None and math.isfinite(float(value))

    return not record.get("diverged") and all(finite(record[k]) for k in MEASURES if k in record)


def networks(root: Path, budget: Budget, extra: Sequence[str] = ()) -> dict[str, dict[str, list[Run]]]:
    """The untrained runs the ledger plans at `budget` under `root` (its images, seeds and recipes), by network and
    recipe: what the recipe study and the diagnostics read instead of inverting again. A network is named
    `<model>[-<surgery>]`, followed by the overrides that tell it from another network of that name. A reader of the
    ledger has none of repinv-claims' flags, so an extra override of a planned key is refused with no flag to use."""
    claims = {c.id: c for c in CLAIMS if c.source in budget.sources}
    p = plan(list(claims.values()), budget, root, budget.seeds, budget.images, None, lambda *_: None, extra, flags={})
    by_condition: dict[tuple[str, ...], dict[str, list[Run]]] = {}
    for (cid, recipe), conds in p.conditions.items():
        for name, runs in conds.items():
            bucket = by_condition.setdefault(study.canonical(claims[cid].overrides(name, budget.name)), {}).setdefault(recipe, [])
            bucket += [run for _, run in runs if all(r is not run for r in bucket)]
    return {network_name(cond, list(by_condition)): recipes for cond, recipes in by_condition.items()}


def ledger_networks(root: Path, budget: Budget, extra: Sequence[str] = (),
                    models: Sequence[str] | None = None) -> dict[str, dict[str, list[Run]]]:
    """`networks` of the ledger at `root`, those named in `models` if given, for a study that reads its runs: a
    folder that holds none of them (a mistyped folder, another --budget) or `models` naming none is a RepinvError,
    rather than every run made anew."""
    nets = networks(root, budget, extra)
    if not any(run.finished for by in nets.values() for runs in by.values() for run in runs):
        raise RepinvError(f"--ledger {root} holds none of the runs of a ledger made at --budget {budget.name} "
                          "(with these overrides), so every one would be made anew. Give the folder of a ledger and "
                          "the --budget (and overrides) it was made with, e.g. --ledger docs/study/cpu --budget cpu.")
    known_names("--models", models, nets, "a network of the ledger")
    return {net: by for net, by in nets.items() if not models or net in models}


def network_name(condition: Sequence[str], conditions: Sequence[Sequence[str]]) -> str:
    """`study.label` of a condition, with the overrides that no other condition of that label shares."""
    label = study.label(condition)
    others = [c for c in conditions if study.label(c) == label and tuple(c) != tuple(condition)]
    own = [o for o in condition if o.partition("=")[0] not in ("model", "surgery") and any(o not in c for c in others)]
    return " ".join([label, *own])
