"""Do cheap layer diagnostics predict how well a layer inverts?

For untrained ViT-B/32, ResNet50 and MLP-Mixer-B/16 (each with and without LayerNorm where it
has any) this runs `repinv-diagnose` over depth: the Jacobian's spectrum at the target image, and
the study recipe's inversion from several seeds (their PSNR to the target is what the
diagnostics should predict; their disagreement is the non-uniqueness diagnostic). It writes

- diagnostics.csv: one row per (model, variant, layer, image) with every measure,
- correlations.csv: per diagnostic, the Spearman rank correlation with the inversion's PSNR
  across all layers and models, and its cost in seconds beside the inversion's,
- diagnostics.png: each diagnostic against depth beside the PSNR against depth.

`--smoke` runs the tiny models (vit_tiny, resnet_tiny, mixer_tiny) for a few steps.

`--ledger ROOT` diagnoses every network and layer a claims ledger inverted (`repinv-claims --budget
B --out ROOT`), against the PSNR of the ledger's own runs (its default recipe, read from its run
folders, not run again). Sized for the CPU budget's 18 layers in about 20 minutes on 2 cores:
- the spectrum once per network at the target (top 8 singular values from 8 + 4 probes and 6 Krylov
  iterations, at most 0.6% below the exact top 8 of a flat spectrum; 8 Lanczos steps for the small
  end), cached in `ROOT/spectra/`;
- non-uniqueness between the ledger's runs and `--extra-seeds` (default 1) more inversions of the
  same network (seeds after the ledger's; the weights keep its first seed, only the starting noise changes) at
  `--extra-steps` (default 300) steps: runs of the study runner under ROOT, so they are made once.
  A 300-step inversion is less converged than the ledger's 1,500-step one, so the pair's
  disagreement bounds the non-uniqueness from above; more seeds or steps sharpen it at their cost.
`--models` diagnoses some of the ledger's networks: their rows of the folder's diagnostics.csv are
remade, the other networks' rows kept, and the correlations and plot cover them all.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from repinv import study  # noqa: E402
from repinv.claims.ledger import BUDGETS, DEFAULT_RECIPE, ledger_networks  # noqa: E402
from repinv.conf import respell_all  # noqa: E402
from repinv.diagnostics.nonunique import INVERSION_PSNR, inversion_quality, pairwise  # noqa: E402
from repinv.diagnostics.run import diagnose, finished_diagnosis  # noqa: E402
from repinv.diagnostics.table import read_table, write_table  # noqa: E402
from repinv.errors import RepinvError  # noqa: E402
from repinv.objectives import ACCURATE  # noqa: E402
from repinv.reporting.results import read_records  # noqa: E402
from repinv.reporting.tables import write_csv  # noqa: E402
from repinv.study import Run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODELS = {  # model config -> layers over depth (the patch embedding or stem first)
    "full": {"vit_b_32": ["patch_embed", *range(12)], "resnet50": list(range(5)), "mixer_b16": ["stem", *range(12)]},
    "smoke": {"vit_tiny": ["patch_embed", 1], "resnet_tiny": [0, 2, 4], "mixer_tiny": ["stem", 1]},
}
SETTINGS = {
    "full": ["experiment=study", "diagnostics.nonunique.seeds=3"],
    "smoke": ["steps=10", "log_every=5", "diagnostics.nonunique.seeds=2", "diagnostics.top_k=4", "diagnostics.oversample=2",
              "diagnostics.power_iters=1", "diagnostics.lanczos_steps=3", "diagnostics.small_k=2"],
}
# diagnostic -> (how it is read from a record, the record's seconds columns that measure its cost)
DIAGNOSTICS = {
    "null_fraction": (lambda r: r["null_fraction"], ["forward_seconds"]),
    "stable_rank_fraction": (lambda r: r["stable_rank"] / r["n_in"], ["svd_seconds"]),
    "entropy_rank": (lambda r: r["entropy_rank"], ["svd_seconds"]),
    "log10_condition": (lambda r: math.inf if r["condition"] is None  # infinite: written as null
                        else math.log10(r["condition"]) if r["condition"] > 0 else math.nan,
                        ["svd_seconds", "lanczos_seconds"]),
    "nonunique_psnr": (lambda r: r["nonunique_psnr"], ["nonunique_seconds"]),
    "nonunique_input_l2": (lambda r: r["nonunique_input_l2"], ["nonunique_seconds"]),
}
TARGET = INVERSION_PSNR
# --ledger: the spectrum's settings (no inversions of its own, no normalisation variants)
LEDGER_SPECTRUM = ["diagnostics.nonunique.seeds=0", "diagnostics.norm_ablation=[]", "diagnostics.top_k=8",
                   "diagnostics.oversample=4",
                   "diagnostics.power_iters=6", "diagnostics.lanczos_steps=8", "diagnostics.small_k=2", "logger=none"]


def diagnose_with(overrides: list[str]) -> list[dict]:
    """`repinv-diagnose OVERRIDES` in this process; its records."""
    with initialize_config_module("repinv.conf", version_base="1.3"):
        return diagnose(compose("diagnose", overrides=respell_all(overrides)))


def run_model(model: str, layers: list, mode: str, out: Path, extra: list[str]) -> list[dict]:
    """All diagnostics of one model over depth, with and without LayerNorm."""
    records = diagnose_with([f"model={model}", f"layers=[{','.join(map(str, layers))}]", "logger=none",
                             "diagnostics.norm_ablation=[all]", *SETTINGS[mode], *extra, f"output_dir={out / model}"])
    for r in records:
        r["nonunique_seconds"] = r["inversion_seconds"] * r["nonunique_k"]
    return records


def spectrum_of(base: Run, root: Path) -> list[dict]:
    """The spectrum of every layer of a ledger run at its targets, made once under `root/spectra/`."""
    overrides = study.canonical([*base.overrides, *LEDGER_SPECTRUM])
    folder = root / "spectra" / study.folder_name(overrides)
    if finished_diagnosis(folder):
        return read_records(folder)
    resume = ["resume=last"] if (folder / "config.yaml").is_file() else []  # one stopped before it finished
    return diagnose_with([*overrides, *resume, f"output_dir={study.quote(folder)}"])


def reconstruction(run: Run, record: dict) -> torch.Tensor:
    """A record's reconstruction PNG as a [3, H, W] tensor in [0, 1]."""
    pixels = np.asarray(Image.open(run.folder / record["png"]).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(pixels).permute(2, 0, 1)


def inversion_seconds(run: Run) -> float:
    """The wall time of a run per target it inverted (its targets share each step)."""
    first = run.records[0]
    return first["seconds_per_step"] * first["steps"] / len(run.records)


def costs(bases: list[Run], extra: list[Run]) -> dict:
    """What one target's inversion took (mean over the ledger's runs) and its extra seeds together, from the runs that
    finished: a run that failed has no time to count."""
    ledger, done = [r for r in bases if r.ok], [r for r in extra if r.ok]
    return {"inversion_seconds": sum(map(inversion_seconds, ledger)) / len(ledger),
            "nonunique_seconds": sum(map(inversion_seconds, done))}


def network_records(name: str, bases: list[Run], extra: list[Run], root: Path) -> list[dict]:
    """Spectrum and non-uniqueness of every (layer, image) of one network, with the ledger runs' PSNR. Non-uniqueness
    pairs the first ledger run with the extra seeds, which keep its weights: each ledger seed has weights of its own."""
    same_weights, ledger = [r for r in [bases[0], *extra] if r.ok], [r for r in bases if r.ok]
    out = []
    for row in spectrum_of(bases[0], root):
        def record(run: Run, key=(row["layer"], row["image"])) -> dict:
            return next(r for r in run.records if (r["layer"], r["image"]) == key)

        out.append({**row, "model": name, "variant": "as_configured",
                    **pairwise(torch.stack([reconstruction(run, record(run)) for run in same_weights]),
                               [bool(record(run)[ACCURATE]) for run in same_weights]),
                    **inversion_quality([record(run) for run in ledger]), **costs(bases, extra)})
    return out


def check_reconstructions(nets: dict[str, list[Run]]) -> None:
    """Refuse, before any run, a ledger whose finished first runs lack their reconstruction PNGs: non-uniqueness
    compares them with the extra seeds' (a ledger copied without its images keeps only its records)."""
    missing = [f"{name} ({bases[0].folder})" for name, bases in nets.items() if bases[0].finished
               and not all((bases[0].folder / r["png"]).is_file() for r in read_records(bases[0].folder))]
    if missing:
        raise RepinvError(f"the ledger's runs of {', '.join(missing)} hold their records but not their reconstruction "
                          "PNGs, which non-uniqueness compares with a second inversion. Give a ledger folder whose runs "
                          "were made there (repinv-claims --out writes them), or leave those networks out with --models.")


def ledger_records(root: Path, budget: str, extra_seeds: int, extra_steps: int, overrides: list[str],
                   models: list[str] | None = None) -> list[dict]:
    """Every network (or those named in `models`) and layer of the ledger at `root`: its runs (made if missing), the
    extra seeds, the spectra."""
    nets = {name: by[DEFAULT_RECIPE] for name, by in ledger_networks(root, BUDGETS[budget], overrides, models).items()}
    check_reconstructions(nets)
    extra = {name: [study.run_for(root, [*base.overrides, f"model.seed={study.value(base.overrides, 'seed')}",
                                         f"seed={len(bases) + k}", f"steps={extra_steps}"])
                    for base in bases[:1] for k in range(extra_seeds)] for name, bases in nets.items()}
    study.execute([*(r for bases in nets.values() for r in bases), *(r for runs in extra.values() for r in runs)])
    return [r for name, bases in nets.items() if bases[0].ok
            for r in network_records(name, bases, extra[name], root)]


def keeping_others(records: list[dict], table: Path, diagnosed: list[str]) -> list[dict]:
    """The rows of an earlier `table` of every network but the `diagnosed` ones, then `records`: diagnosing part of a
    ledger (--models) into its table replaces those networks' rows and keeps the rest."""
    kept = [r for r in read_table(table) if r["model"] not in diagnosed] if table.is_file() else []
    return [*kept, *records]


def correlations(records: list[dict]) -> list[dict]:
    """Per diagnostic: Spearman ρ with the inversion's PSNR over every record, and mean costs."""
    target = [r[TARGET] for r in records]
    rows = []
    for name, (read, costs) in DIAGNOSTICS.items():
        rho = spearmanr([read(r) for r in records], target, nan_policy="omit").statistic
        rows.append({"diagnostic": name, "spearman": float(rho), "n": len(records),
                     "seconds": sum(sum(r[c] for c in costs) for r in records) / len(records),
                     "inversion_seconds": sum(r["inversion_seconds"] for r in records) / len(records)})
    return rows


def plot(records: list[dict], corr: list[dict], path: Path) -> Path:
    """Each diagnostic against depth, then the inversion's PSNR against depth; one line per (model, variant)."""
    names = [*DIAGNOSTICS, TARGET]
    rho = {c["diagnostic"]: c["spearman"] for c in corr}
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(names) / cols), cols, figsize=(3.4 * cols, 3.2 * math.ceil(len(names) / cols)))
    axes = axes.flatten()
    for ax in axes[len(names):]:
        ax.axis("off")
    lines = sorted({(r["model"], r["variant"]) for r in records})
    for ax, name in zip(axes, names):
        read = DIAGNOSTICS[name][0] if name in DIAGNOSTICS else (lambda r: r[TARGET])
        for model, variant in lines:
            rows = sorted((r for r in records if (r["model"], r["variant"]) == (model, variant)), key=lambda r: r["depth"])
            ax.plot([r["depth"] for r in rows], [read(r) for r in rows], marker="o", label=f"{model} {variant}")
        ax.set_title(name if name == TARGET else f"{name}\nSpearman ρ = {rho[name]:.2f}", fontsize=9)
        ax.set_xlabel("depth (layer position)")
    axes[len(names) - 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    """Diagnose, then write the table, the correlations and the plot; exit 2 on bad input."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny untrained models and a few steps (what the tests run)")
    p.add_argument("--out", type=Path,
                   help="where the table, plot and runs go (default logs/diagnostics; with --ledger its folder)")
    p.add_argument("--ledger", type=Path, help="a claims ledger's folder: diagnose every network and layer it inverted")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="with --ledger: the ledger's budget (default cpu)")
    p.add_argument("--extra-seeds", type=study.count_arg("seeds", 2), default=1,
                   help="with --ledger: inversions besides the ledger's for non-uniqueness (at least 1)")
    p.add_argument("--extra-steps", type=study.steps_arg, default=300, help="with --ledger: the steps of each extra inversion")
    p.add_argument("--models", nargs="+", help="with --ledger: a subset of its networks by name (e.g. vit_b_32); the "
                   "other networks' rows of OUT/diagnostics.csv are kept, and the correlations cover them all")
    p.add_argument("overrides", nargs="*", help="extra repinv-diagnose overrides for every model, e.g. image=astronaut "
                   "(with --ledger: the ledger's extra overrides)")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    args.out = args.out or args.ledger or REPO / "logs" / "diagnostics"
    try:
        study.check_out(args.out, "the diagnostics' table, plot and runs go in a folder")
        if args.ledger:
            records = ledger_records(args.ledger, args.budget, args.extra_seeds, args.extra_steps, args.overrides, args.models)
            if args.models:
                records = keeping_others(records, args.out / "diagnostics.csv", args.models)
    except RepinvError as err:
        print(f"diagnostics.py: error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.ledger:
        records = [r for model, layers in MODELS[mode].items() for r in run_model(model, layers, mode, args.out, args.overrides)]
    write_table(records, args.out / "diagnostics.csv")
    corr = correlations(records)
    write_csv(args.out / "correlations.csv", corr)
    plot(records, corr, args.out / "diagnostics.png")
    print(f"Spearman rank correlation with the inversion's PSNR over {len(records)} (model, variant, layer, image):")
    for c in corr:
        print(f"  {c['diagnostic']:22s} rho={c['spearman']:+.2f}  cost {c['seconds']:.2f} s "
              f"vs inversion {c['inversion_seconds']:.2f} s")
    print(f"table {args.out / 'diagnostics.csv'}, correlations {args.out / 'correlations.csv'}, "
          f"plot {args.out / 'diagnostics.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
