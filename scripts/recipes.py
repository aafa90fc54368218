"""Recipe study: which parametrisation, prior and optimiser inverts untrained networks fastest.

    python scripts/recipes.py [--smoke] [--jobs N] [--out DIR] [--steps N] [overrides...]

Every recipe (a set of `repinv` overrides) runs through the CLI (a subprocess per recipe, model
and seed, all images and layers in one run) in `<out>/runs/<recipe>/<model>/seed<k>/`; a run
folder with a finished metrics.json is reused. From each run's CSV log (`csv/metrics.csv`,
psnr/<image>/<layer> every `log_every` steps) and final metrics it reports, per recipe and
model/layer, the mean PSNR and SSIM over images and seeds at the report steps, and the steps
the recipe needs to reach the best final PSNR of the two study recipes. Writes `recipes.csv`
and `recipes.png` (PSNR against steps, one line per recipe, one panel per model/layer).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# name -> overrides on top of the defaults (param=pixel, regularizer=blur, optimizer=sgd, scheduler=linear)
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny models, 1 image, 1 seed, 20 steps (what the tests run)")
    p.add_argument("--out", type=Path, default=REPO / "logs" / "recipes", help="where the runs, CSV and plot go")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each its own repinv process)")
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES), help="a subset of the recipes")
    p.add_argument("--models", nargs="+", help="a subset of the models by label (vit_b_32 resnet50 mixer_b16_noln; "
                   "with --smoke vit_tiny resnet_tiny mixer_tiny_noln)")
    p.add_argument("--steps", type=int, help="steps per run (default 1500; the report steps above it are left out)")
    p.add_argument("overrides", nargs="*", help="extra repinv overrides applied to every run")
    return p


def run_one(recipe: str, model: Model, seed: int, settings: dict, out: Path, extra: list[str]) -> Path | None:
    """One CLI run; returns its folder, or None (with the log's path on stderr) when it failed."""
    run_dir = out / "runs" / recipe / model.label / f"seed{seed}"
    done = run_dir / "metrics.json"
    if done.is_file() and all(r.get("status") == "finished" for r in json.loads(done.read_text())):
        return run_dir
    cmd = [sys.executable, "-m", "repinv", *model.overrides, *RECIPES[recipe], f"image=[{','.join(settings['images'])}]",
           f"seed={seed}", f"steps={settings['steps']}", f"log_every={settings['log_every']}", "logger=csv",
           "checkpoint_every=0", *extra, f"hydra.run.dir={run_dir}"]
    log = run_dir.parent / f"{run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
    if code != 0 or not done.is_file():
        print(f"{recipe} {model.label} seed {seed} failed (exit {code}); see {log}", file=sys.stderr)
        return None
    return run_dir


def curves(run_dir: Path, steps: int) -> dict[str, dict[str, dict[int, float]]]:
    """layer -> metric (psnr, ssim) -> step -> mean over the run's images; the final metrics count as step `steps`."""
    values: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                metric, _, rest = key.partition("/")
                if metric in ("psnr", "ssim") and value not in ("", None):
                    values[rest.split("/", 1)[1]][metric][int(row["step"])].append(float(value))
    for record in json.loads((run_dir / "metrics.json").read_text()):
        for metric in ("psnr", "ssim"):
            values[record["layer"]][metric][steps].append(float(record[metric]))
    return {layer: {m: {s: sum(v) / len(v) for s, v in by_step.items()} for m, by_step in ms.items()}
            for layer, ms in values.items()}


def mean_curves(runs: list[Path], steps: int) -> dict[str, dict[str, dict[int, float]]]:
    """`curves` averaged over runs (the seeds), at the steps every run logged."""
    parts = [curves(r, steps) for r in runs]
    out: dict = {}
    for layer in parts[0]:
        out[layer] = {}
        for metric in ("psnr", "ssim"):
            common = set.intersection(*(set(p[layer][metric]) for p in parts))
            out[layer][metric] = {s: sum(p[layer][metric][s] for p in parts) / len(parts) for s in sorted(common)}
    return out


def steps_to_reach(curve: dict[int, float], goal: float) -> int | None:
    """The first logged step at which `curve` reaches `goal`; None if it never does."""
    return next((s for s in sorted(curve) if curve[s] >= goal), None)


def table(results: dict[tuple[str, str], dict], report: list[int]) -> list[dict]:
    """One row per recipe and model/layer: PSNR/SSIM at the report steps and the steps to the study's best."""
    rows = []
    panels = sorted({(model, layer) for (_, model), layers in results.items() for layer in layers})
    for model, layer in panels:
        study = [results[(s, model)][layer]["psnr"] for s in STUDY if (s, model) in results]
        goal = max((curve[max(curve)] for curve in study), default=None)  # the best final PSNR
        for (recipe, m), layers in results.items():
            if m != model or layer not in layers:
                continue
            psnr, ssim = layers[layer]["psnr"], layers[layer]["ssim"]
            row = {"recipe": recipe, "model": model, "layer": layer}
            for s in report:
                row[f"psnr@{s}"], row[f"ssim@{s}"] = psnr.get(s), ssim.get(s)
            row["study_best_psnr"] = goal
            row["steps_to_study_best"] = steps_to_reach(psnr, goal) if goal is not None else None
            rows.append(row)
    return rows


def plot(results: dict[tuple[str, str], dict], path: Path) -> None:
    """PSNR against steps: one panel per model/layer, one line per recipe."""
    panels = sorted({(model, layer) for (_, model), layers in results.items() for layer in layers})
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (model, layer) in zip(axes.flat, panels):
        for (recipe, m), layers in results.items():
            if m == model and layer in layers:
                curve = layers[layer]["psnr"]
                ax.plot(list(curve), list(curve.values()), label=recipe)
        ax.set(title=f"{model} {layer}", xlabel="step", ylabel="PSNR (dB)")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    settings = dict(SMOKE) if args.smoke else dict(images=IMAGES, seeds=SEEDS, steps=STEPS, report=REPORT, log_every=LOG_EVERY)
    if args.steps:
        settings["steps"] = args.steps
    settings["report"] = sorted({s for s in settings["report"] if s < settings["steps"]} | {settings["steps"]})
    models = [m for m in (SMOKE_MODELS if args.smoke else MODELS) if not args.models or m.label in args.models]
    if not models:
        print(f"--models {' '.join(args.models)} names none of {[m.label for m in (SMOKE_MODELS if args.smoke else MODELS)]}",
              file=sys.stderr)
        return 2
    jobs = [(r, m, s) for r in args.recipes for m in models for s in settings["seeds"]]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        dirs = list(pool.map(lambda j: run_one(*j, settings, args.out, args.overrides), jobs))
    runs: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for (recipe, model, _), d in zip(jobs, dirs):
        if d is not None:
            runs[(recipe, model.label)].append(d)
    results = {key: mean_curves(ds, settings["steps"]) for key, ds in runs.items()}
    if not results:
        print(f"every run failed; see the logs under {args.out / 'runs'}", file=sys.stderr)
        return 1
    rows = table(results, settings["report"])
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "recipes.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["recipe"])
        writer.writeheader()
        writer.writerows(rows)
    plot(results, args.out / "recipes.png")
    print(f"wrote {args.out / 'recipes.csv'} and {args.out / 'recipes.png'}")
    return 0 if len(runs) * len(settings["seeds"]) == sum(map(len, runs.values())) == len(jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
