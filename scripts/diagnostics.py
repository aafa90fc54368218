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
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from repinv.diagnostics.run import diagnose  # noqa: E402
from repinv.diagnostics.table import write_table  # noqa: E402

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
    "log10_condition": (lambda r: math.log10(r["condition"]) if r["condition"] > 0 else math.nan, ["svd_seconds", "lanczos_seconds"]),
    "nonunique_psnr": (lambda r: r["nonunique_psnr"], ["nonunique_seconds"]),
    "nonunique_input_l2": (lambda r: r["nonunique_input_l2"], ["nonunique_seconds"]),
}
TARGET = "inversion_psnr"


def run_model(model: str, layers: list, mode: str, out: Path, extra: list[str]) -> list[dict]:
    """All diagnostics of one model over depth, with and without LayerNorm."""
    overrides = [f"model={model}", f"layers=[{','.join(map(str, layers))}]", "logger=none", "diagnostics.norm_ablation=[all]",
                 *SETTINGS[mode], *extra, f"output_dir={out / model}"]
    with initialize_config_module("repinv.conf", version_base="1.3"):
        cfg = compose("diagnose", overrides=overrides)
    records = diagnose(cfg)
    for r in records:
        r["nonunique_seconds"] = r["inversion_seconds"] * r["nonunique_k"]
    return records


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


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny untrained models and a few steps (what the tests run)")
    p.add_argument("--out", type=Path, default=REPO / "logs" / "diagnostics", help="where the table, plot and runs go")
    p.add_argument("overrides", nargs="*", help="extra repinv-diagnose overrides for every model, e.g. image=astronaut")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    args.out.mkdir(parents=True, exist_ok=True)
    records = [r for model, layers in MODELS[mode].items() for r in run_model(model, layers, mode, args.out, args.overrides)]
    write_table(records, args.out / "diagnostics.csv")
    corr = correlations(records)
    write_csv(corr, args.out / "correlations.csv")
    plot(records, corr, args.out / "diagnostics.png")
    print(f"Spearman rank correlation with the inversion's PSNR over {len(records)} (model, variant, layer, image):")
    for c in corr:
        print(f"  {c['diagnostic']:22s} rho={c['spearman']:+.2f}  cost {c['seconds']:.2f} s vs inversion {c['inversion_seconds']:.2f} s")
    print(f"table {args.out / 'diagnostics.csv'}, correlations {args.out / 'correlations.csv'}, plot {args.out / 'diagnostics.png'}")


if __name__ == "__main__":
    main()
