"""Recipe study: which parametrisation, prior and optimiser inverts untrained networks fastest.

    python scripts/recipes.py [--smoke] [--jobs N] [--out DIR] [--steps N] [overrides...]
    python scripts/recipes.py --ledger ROOT [--budget cpu] [--out DIR] [overrides...]

Every recipe (a set of `repinv` overrides) is a run of the study runner (`repinv.study`: one run
per recipe, model and seed, all images and layers in one run) under `<out>/runs/`; a finished run
with the same overrides, made by any tool under the same folder, is reused. From each run's CSV
log (`csv/metrics.csv`, <metric>/<image>/<layer> every `log_every` steps) and final metrics it reports,
per recipe and model/layer, the mean PSNR and SSIM over images and seeds at the report steps, and
the steps the recipe needs to reach the best final PSNR of the study recipes. Writes `recipes.csv`
and `recipes.png` (PSNR against steps, one line per recipe, one panel per model/layer).

`--ledger ROOT` answers the question from a claims ledger's runs (`repinv-claims --budget B --out
ROOT`) instead: the study recipes are the ledger's own (at the budget's steps, read from its run
folders, not run again); every other recipe runs `--steps` (default 300) steps on the same
networks, layers, images and budget overrides (the precision the ledger was made in), under ROOT. It also writes
`recipes.md`: whether one recipe reaches the better study recipe's final PSNR within `--within`
(default 150) steps at every layer of every network, and where each recipe falls short.
(`adam-pyramid-blur` is the recipe of `experiment=fast`.) `--smoke` is refused with `--ledger`, and
`--budget` and `--within` without it: the other mode would ignore them.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from repinv import study  # noqa: E402
from repinv.claims.ledger import BUDGETS, DEFAULT_RECIPE, ledger_networks, refuse_planned  # noqa: E402
from repinv.errors import RepinvError, known_names  # noqa: E402
from repinv.metrics import COMPARED, PSNR, axis_label  # noqa: E402
from repinv.reporting.results import read_records  # noqa: E402
from repinv.reporting.tables import columns, write_csv  # noqa: E402
from repinv.study import Run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "logs" / "recipes"

# name -> overrides on top of the defaults (param=pixel, priors=blur, optimizer=sgd, scheduler=linear). The priors go by
# their former name, regularizer (repinv.conf.ALIASES): run folders are named by a hash of these overrides, and a
# respelled recipe would run again.
RECIPES = {
    "study-decay": [],
    "study-constant": ["scheduler=constant"],
    "adam-pixel-blur": ["optimizer=adam"],
    "adam-fourier": ["optimizer=adam", "param=fourier", "regularizer=none"],
    "adam-fourier-tv": ["optimizer=adam", "param=fourier", "regularizer=tv", "regularizer.blur=null"],
    "adam-pyramid-blur": ["optimizer=adam", "param=pyramid"],
    "adam-cosine-fourier": ["optimizer=adam", "param=fourier", "regularizer=none", "scheduler=cosine"],
}
STUDY = ("study-decay", "study-constant")
GOAL = f"study_best_{PSNR}"  # the table column of the best final PSNR of the study recipes


@dataclass
class Model:
    """One network of the study: its label, its overrides (model, surgery, layers)."""

    label: str
    overrides: list[str]


MODELS = [
    Model("vit_b_32", ["model=vit_b_32", "layers=[patch_embed,1,5,11]"]),
    Model("resnet50", ["model=resnet50", "layers=[0,1,3]"]),
    Model("mixer_b16_noln", ["model=mixer_b16", "surgery=no_layernorm", "layers=[3]"]),
]
SMOKE_MODELS = [
    Model("vit_tiny", ["model=vit_tiny", "layers=[patch_embed,1]"]),
    Model("resnet_tiny", ["model=resnet_tiny", "layers=[0,1]"]),
    Model("mixer_tiny_noln", ["model=mixer_tiny", "surgery=no_layernorm", "layers=[1]"]),
]
IMAGES, SEEDS, STEPS, REPORT, LOG_EVERY = ["chelsea", "astronaut", "coffee"], [0, 1], 1500, [100, 300, 1500], 50
SMOKE = dict(images=["chelsea"], seeds=[0], steps=20, report=[5, 10, 20], log_every=5)
LEDGER_STEPS, WITHIN = 300, 150  # --ledger: steps of the other recipes, and the goal's step budget


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny models, 1 image, 1 seed, 20 steps (what the tests run)")
    p.add_argument("--out", type=Path, help=f"where the runs, CSV and plot go (default {DEFAULT_OUT}; with --ledger its folder)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each its own repinv process)")
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES), help="a subset of the recipes")
    p.add_argument("--models", nargs="+", help="a subset of the models by label (vit_b_32 resnet50 mixer_b16_noln; "
                   "with --smoke vit_tiny resnet_tiny mixer_tiny_noln)")
    p.add_argument("--steps", type=study.steps_arg,
                   help="steps per run (default 1500, with --ledger 300; the report steps above it are left out)")
    p.add_argument("--ledger", type=Path, help="a claims ledger's folder: its runs are the study recipes, the other recipes "
                   "run on its networks and layers (under this folder); --out defaults to it")
    p.add_argument("--budget", choices=sorted(BUDGETS), help="with --ledger: the ledger's budget (default cpu)")
    p.add_argument("--within", type=study.steps_arg,
                   help=f"with --ledger: the steps a recipe may take to reach the goal (default {WITHIN})")
    p.add_argument("overrides", nargs="*", help="extra repinv overrides applied to every run")
    return p


def recipe_settings(recipe: str, model: Model, seed: int, settings: dict) -> list[str]:
    """What the study sets in the run of one recipe, model and seed."""
    return [*model.overrides, *RECIPES[recipe], f"image=[{','.join(settings['images'])}]", f"seed={seed}",
            f"steps={settings['steps']}", f"log_every={settings['log_every']}", "logger=csv", "checkpoint_every=0"]


def recipe_run(recipe: str, model: Model, seed: int, settings: dict, out: Path, extra: list[str]) -> Run:
    """The study run of one recipe, model and seed under `out`."""
    return study.run_for(out, [*recipe_settings(recipe, model, seed, settings), *extra])


def refuse_set(extra: list[str], runs: Iterable[list[str]]) -> None:
    """Refuse an extra override of a key the study sets in a run (`runs`: what it sets in each, with every recipe's
    keys, selected or not: `optimizer=adam` on study-decay alone would run Adam under the study recipe's name), naming
    --steps."""
    refuse_planned(extra, {study.key(o) for run in runs for o in run}, {"steps": "--steps"}, "the recipe study",
                   "per recipe, model and seed")


CSV_LOG = Path("csv") / "metrics.csv"  # in a run folder: what the CSV logger writes, each step's metrics


def no_csv_log(run_dir: Path) -> RepinvError:
    return RepinvError(f"{run_dir} has no CSV log ({run_dir / CSV_LOG}); the recipe study reads each run's PSNR curve "
                       "from it, so its runs need a CSV logger: the default logger or logger=csv, not logger=none.")


def check_logs(runs: Iterable[Run]) -> None:
    """Before any run is made: a finished run kept without its CSV log (a ledger made with logger=none) is refused."""
    kept = next((r for r in runs if r.finished and not (r.folder / CSV_LOG).is_file()), None)
    if kept is not None:
        raise no_csv_log(kept.folder)


def curves(run_dir: Path) -> dict[str, dict[str, dict[int, float]]]:
    """layer -> metric (each of `COMPARED`) -> step -> mean over the run's images; the final metrics count as its last step."""
    values: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    log = run_dir / CSV_LOG
    if not log.is_file():
        raise no_csv_log(run_dir)
    with open(log) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                metric, _, rest = key.partition("/")
                if metric in COMPARED and value not in ("", None):
                    values[rest.split("/", 1)[1]][metric][int(row["step"])].append(float(value))
    for record in read_records(run_dir):
        for metric in COMPARED:
            values[record["layer"]][metric][int(record["steps"])].append(float(record[metric]))
    return {layer: {m: {s: sum(v) / len(v) for s, v in by_step.items()} for m, by_step in ms.items()}
            for layer, ms in values.items()}


def mean_curves(runs: list[Path]) -> dict[str, dict[str, dict[int, float]]]:
    """`curves` averaged over runs (the seeds), at the steps every run logged."""
    parts = [curves(r) for r in runs]
    out: dict = {}
    for layer in parts[0]:
        out[layer] = {}
        for metric in COMPARED:
            common = set.intersection(*(set(p[layer][metric]) for p in parts))
            out[layer][metric] = {s: sum(p[layer][metric][s] for p in parts) / len(parts) for s in sorted(common)}
    return out


def steps_to_reach(curve: dict[int, float], goal: float) -> int | None:
    """The first logged step at which `curve` reaches `goal`; None if it never does."""
    return next((s for s in sorted(curve) if curve[s] >= goal), None)


def table(results: dict[tuple[str, str], dict], report: list[int], studied: tuple[str, ...] = STUDY) -> list[dict]:
    """One row per recipe and model/layer: PSNR/SSIM at the report steps and the steps to the best final PSNR of `studied`."""
    rows = []
    panels = sorted({(model, layer) for (_, model), layers in results.items() for layer in layers})
    for model, layer in panels:
        best = [results[(s, model)][layer][PSNR] for s in studied if layer in results.get((s, model), {})]
        goal = max((curve[max(curve)] for curve in best), default=None)  # the best final PSNR
        for (recipe, m), layers in results.items():
            if m != model or layer not in layers:
                continue
            row = {"recipe": recipe, "model": model, "layer": layer}
            for s in report:
                row.update({f"{metric}@{s}": layers[layer][metric].get(s) for metric in COMPARED})
            row[GOAL] = goal
            row["steps_to_study_best"] = steps_to_reach(layers[layer][PSNR], goal) if goal is not None else None
            rows.append(row)
    return rows


def figure(results: dict[tuple[str, str], dict]):
    """PSNR against steps: one panel per model/layer, one line per recipe, each recipe one colour in every panel
    (a recipe missing from a panel does not shift the others' colours)."""
    panels = sorted({(model, layer) for (_, model), layers in results.items() for layer in layers})
    colours = {recipe: f"C{i % 10}" for i, recipe in enumerate(dict.fromkeys(recipe for recipe, _ in results))}
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (model, layer) in zip(axes.flat, panels):
        for (recipe, m), layers in results.items():
            if m == model and layer in layers:
                curve = layers[layer][PSNR]
                ax.plot(list(curve), list(curve.values()), label=recipe, color=colours[recipe])
        ax.set(title=f"{model} {layer}", xlabel="step", ylabel=axis_label(PSNR))
    spare = list(axes.flat)[len(panels):]
    for ax in spare:
        ax.axis("off")
    key = [Line2D([], [], color=colour, label=recipe) for recipe, colour in colours.items()]
    (spare[0] if spare else axes.flat[0]).legend(handles=key, fontsize=7, loc="center" if spare else "best")
    fig.tight_layout()
    return fig


def plot(results: dict[tuple[str, str], dict], path: Path) -> None:
    """Save `figure(results)` to `path`."""
    fig = figure(results)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check_modes(args) -> None:
    """Before any run: the options of one mode (the recipe study, or a ledger's) are refused in the other, where they
    would be ignored; a ledger's budget and goal take their defaults."""
    study.check_out(args.out, "the recipe study's runs, table and plot go in a folder")
    if args.ledger and args.smoke:
        raise RepinvError(f"--smoke with --ledger {args.ledger}: the ledger's runs set the networks, images and steps, so "
                          "--smoke (the tiny models) would be ignored; leave out --smoke, or --ledger for the smoke study.")
    given = [f"--{name} {getattr(args, name)}" for name in ("budget", "within") if getattr(args, name) is not None]
    if given and not args.ledger:
        raise RepinvError(f"{' and '.join(given)} without --ledger: a ledger's budget and the steps a recipe may take to "
                          "reach its best final PSNR mean nothing to the recipe study, which would ignore them; give "
                          "--ledger ROOT, or leave them out.")
    args.budget = args.budget or "cpu"
    args.within = WITHIN if args.within is None else args.within


def study_jobs(args) -> tuple[dict[tuple[str, str], list[Run]], list[int], tuple[str, ...]]:
    """(recipe, model) -> its runs (one per seed), the report steps, and the study recipes."""
    settings = dict(SMOKE) if args.smoke else dict(images=IMAGES, seeds=SEEDS, steps=STEPS, report=REPORT, log_every=LOG_EVERY)
    settings["steps"] = args.steps or settings["steps"]
    report = sorted({s for s in settings["report"] if s < settings["steps"]} | {settings["steps"]})
    known = SMOKE_MODELS if args.smoke else MODELS
    known_names("--models", args.models, [m.label for m in known], "a model of the recipe study")
    models = [m for m in known if not args.models or m.label in args.models]
    refuse_set(args.overrides, (recipe_settings(r, m, 0, settings) for r in RECIPES for m in models))
    jobs = {(r, m.label): [recipe_run(r, m, seed, settings, args.out, args.overrides) for seed in settings["seeds"]]
            for r in args.recipes for m in models}
    return jobs, report, STUDY


def ledger_jobs(args) -> tuple[dict[tuple[str, str], list[Run]], list[int], tuple[str, ...]]:
    """The ledger's runs under its own recipes (the study recipes), and every other recipe's runs on the same networks."""
    budget = BUDGETS[args.budget]
    refuse_set(args.overrides, [*RECIPES.values(), ["steps="]])  # on top of what the ledger sets
    nets = ledger_networks(args.ledger, budget, args.overrides, args.models)
    steps = args.steps or LEDGER_STEPS
    jobs = {(recipe, net): runs for net, by in nets.items() for recipe, runs in by.items()}
    for net, by in nets.items():
        for recipe in (r for r in args.recipes if r not in STUDY):
            jobs[(recipe, net)] = [study.run_for(args.ledger, [*base.overrides, *RECIPES[recipe], f"steps={steps}"])
                                   for base in by[DEFAULT_RECIPE]]
    studied = tuple(dict.fromkeys(recipe for by in nets.values() for recipe in by))
    return jobs, sorted({args.within, steps, budget.steps}), studied


def reach(row: dict) -> str:
    """Where a table row stands against the goal: the step it reaches it at, or how far short it ends."""
    logged = {int(k.rpartition("@")[2]): k for k in row if k.startswith(f"{PSNR}@") and row[k] is not None}
    last = logged[max(logged)] if logged else None
    if row["steps_to_study_best"] is not None:
        return f"step {row['steps_to_study_best']}"
    ended = f"{row[last]:.1f} dB at step {last.rpartition('@')[2]}" if last else "no PSNR"
    goal = f"{row[GOAL]:.1f} dB" if row[GOAL] is not None else "no goal (no study recipe's run finished)"
    return f"never: {ended} vs {goal}"


def answer(rows: list[dict], within: int) -> list[str]:
    """Whether one recipe reaches the study's best final PSNR within `within` steps at every model/layer, and where
    each falls short."""
    panels = sorted({(r["model"], r["layer"]) for r in rows})
    lines, winners = [], []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = {(r["model"], r["layer"]): r for r in rows if r["recipe"] == recipe}
        short = [f"{m} {layer} ({reach(mine[(m, layer)]) if (m, layer) in mine else 'not run'})" for m, layer in panels
                 if (m, layer) not in mine or (mine[(m, layer)]["steps_to_study_best"] or within + 1) > within]
        winners += [] if short else [recipe]
        lines.append(f"- {recipe}: {len(panels) - len(short)} of {len(panels)} layers within {within} steps"
                     + (f"; short at {', '.join(short)}" if short else ""))
    goal = f"the better study recipe's final PSNR within {within} steps at every layer of every network"
    head = f"Reaches {goal}: {', '.join(winners)}." if winners else f"No recipe reaches {goal}."
    return [head, "", *lines]


def write(results: dict[tuple[str, str], dict], report: list[int], studied: tuple[str, ...], out: Path) -> list[dict]:
    """recipes.csv and recipes.png under `out`; returns the table."""
    rows = table(results, report, studied)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "recipes.csv", rows, columns(rows) or ["recipe"])
    plot(results, out / "recipes.png")
    return rows


def main(argv=None) -> int:
    """Make (or reuse) every run, then write the table and the plot (with --ledger also recipes.md); exit 1 when a run failed."""
    args = parser().parse_args(argv)
    out = args.out = args.out or args.ledger or DEFAULT_OUT
    try:
        check_modes(args)
        jobs, report, studied = (ledger_jobs if args.ledger else study_jobs)(args)
        runs = {id(run): run for runs in jobs.values() for run in runs}.values()
        check_logs(runs)
        study.execute(runs, args.jobs)
        results = {key: mean_curves([r.folder for r in runs if r.ok]) for key, runs in jobs.items()
                   if any(r.ok for r in runs)}
    except RepinvError as err:
        print(f"recipes.py: error: {err}", file=sys.stderr)
        return 2
    if not results:
        print(f"every run failed; see the logs under {out / 'runs'}", file=sys.stderr)
        return 1
    rows = write(results, report, studied, out)
    written = [out / "recipes.csv", out / "recipes.png"]
    if args.ledger:
        lines = answer(rows, args.within)
        (out / "recipes.md").write_text("# Recipe study from the ledger's runs\n\n" + "\n".join(lines) + "\n")
        written.append(out / "recipes.md")
        print("\n".join(lines))
    print(f"wrote {', '.join(map(str, written))}")
    return 0 if all(r.ok for runs in jobs.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
