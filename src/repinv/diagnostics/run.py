"""`repinv-diagnose`: why a layer cannot be inverted, per (model variant, layer, image).

A thin Hydra entry point over `diagnose(cfg)` (the shell `repinv` has: `repinv.cli.command` and
`repinv.cli.run_task`), which builds the model as `repinv` does (`repinv.models.build.build_model`), and for
every normalisation variant, layer and image measures the Jacobian's spectrum
(`repinv.diagnostics.spectrum`) and the non-uniqueness of K seeded inversions
(`repinv.diagnostics.nonunique`). The run folder holds config.yaml and metrics.json (one record
per variant, layer and image); the configured loggers get every measure per layer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from repinv.cli import CONFIG_PATH, command, run_task
from repinv.diagnostics.ablation import AS_CONFIGURED, Variant, check_ablations, variants
from repinv.diagnostics.nonunique import INVERSION_PSNR, seed_inversions
from repinv.diagnostics.spectrum import SpectrumSettings, layer_function, spectrum
from repinv.diagnostics.table import write_table
from repinv.engine.pipeline import record_config, sweep_name, validate
from repinv.engine.runinfo import RunInfo
from repinv.errors import RepinvError, is_whole
from repinv.inputs.images import load_images
from repinv.metrics import PSNR, require
from repinv.models import LoadedModel
from repinv.models.build import build_model
from repinv.models.taps import resolve_layers
from repinv.reporting.loggers import make_loggers
from repinv.reporting.results import METRICS_FILE, read_records
from repinv.reporting.wandb_logger import OFFLINE_RUNS, WandbFinished, announce_offline_sweep

log = logging.getLogger("repinv.diagnose")
EXAMPLE = "repinv-diagnose model=vit_tiny 'layers=[0,1]' diagnostics.nonunique.seeds=0"

# Scalar measures sent to the loggers (lists and labels stay in metrics.json).
SCALARS = ("sigma_max", "sigma_min_found", "condition", "stable_rank", "numerical_rank", "entropy_rank",
           "null_fraction", "nonunique_psnr", "nonunique_input_l2", INVERSION_PSNR, "inversion_accurate")


def _whole(name: str, value, low: int, example: str) -> int:
    if not is_whole(value) or value < low:
        raise RepinvError(
            f"diagnostics.{name}={value} must be a whole number of at least {low}; e.g. diagnostics.{name}={example}."
        )
    return value


def settings(cfg: DictConfig) -> tuple[SpectrumSettings, int, int, list[str]]:
    """The checked diagnostics settings: spectrum settings, seeds K, inversion steps, ablation kinds. The settings
    `repinv` checks are checked first, as it checks them, so that a bad one is refused before any work."""
    validate(cfg)
    d = cfg.get("diagnostics")
    if d is None:
        raise RepinvError("the config has no diagnostics node; run repinv-diagnose (config diagnose.yaml), not repinv.")
    tol = d.get("rank_tol", 1e-3)
    if not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise RepinvError(
            f"diagnostics.rank_tol={tol} must be a number between 0 and 1; e.g. 1e-3 counts singular values above 0.001 σmax."
        )
    spec = SpectrumSettings(
        top_k=_whole("top_k", d.top_k, 1, "16"),
        oversample=_whole("oversample", d.oversample, 0, "8"),
        power_iters=_whole("power_iters", d.power_iters, 0, "2"),
        lanczos_steps=_whole("lanczos_steps", d.lanczos_steps, 1, "24"),
        small_k=_whole("small_k", d.small_k, 1, "4"),
        rank_tol=float(tol),
        probe_batch=_whole("probe_batch", d.probe_batch, 1, "16"),
        seed=int(cfg.seed),
    )
    seeds = _whole("nonunique.seeds", d.nonunique.seeds, 0, "3")
    if seeds == 1:
        raise RepinvError(
            "diagnostics.nonunique.seeds=1 gives no pair to compare; use 0 (no non-uniqueness) or at least 2, e.g. 3."
        )
    if cfg.seed + seeds - 1 >= 2**32:
        raise RepinvError(
            f"seed={cfg.seed} with diagnostics.nonunique.seeds={seeds} would seed inversions up to {cfg.seed + seeds - 1}, "
            f"past 2^32-1 (what torch and numpy seed with); use seed={2**32 - seeds} or less."
        )
    steps = _whole("nonunique.steps", d.nonunique.steps, 1, "1500 (the study's recipe)")
    if seeds:
        require(cfg, "the non-uniqueness diagnostic (diagnostics.nonunique.seeds > 0)", PSNR)
    return spec, seeds, steps, check_ablations(d.get("norm_ablation"))


def spectra(cfg: DictConfig, model: LoadedModel, spec: SpectrumSettings) -> list[dict]:
    """The spectral measures of every layer of `cfg.layers` at every target image."""
    images = load_images(cfg.image, model.input_size)
    out = []
    for depth, tap in enumerate(resolve_layers(model.net, cfg.get("layers"))):
        fn = layer_function(model, tap)
        for im in images:
            log.info("spectrum of %s at %s (%s)", tap.label, im.name, model.label)
            out.append(
                {
                    "layer": tap.label,
                    "module": tap.module,
                    "depth": depth,
                    "image": im.name,
                    **spectrum(fn, im.pixels[None].float(), spec),
                }
            )
    return out


def diagnose_variant(
    cfg: DictConfig, variant: Variant, spec: SpectrumSettings, seeds: int, steps: int, out_dir: Path
) -> list[dict]:
    """Spectral and non-uniqueness records of one model variant."""
    model = build_model(cfg, variant.surgery)
    rows = spectra(cfg, model, spec)
    if seeds:
        folder = out_dir / "inversions" / variant.name
        found = {
            (r["layer"], r["image"]): r
            for r in seed_inversions(cfg, list(range(cfg.seed, cfg.seed + seeds)), steps, folder, variant.surgery)
        }
        rows = [{**r, **{k: v for k, v in found[(r["layer"], r["image"])].items() if k not in r}} for r in rows]
    return [{"model": model.label, "trained": model.trained, "variant": variant.name, **r} for r in rows]


def log_records(cfg: DictConfig, records: list[dict]) -> None:
    """Every scalar measure to the configured loggers, at step = the layer's position in `layers`."""
    label = records[0]["model"] if records else "model"
    loggers = make_loggers(cfg, RunInfo(f"{label}-diagnose", [label, "diagnose"], "diagnose", group=sweep_name()))
    with WandbFinished() as wandb_run:
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        for depth in sorted({r["depth"] for r in records}):
            flat = {
                f"{k}/{r['variant']}/{r['image']}": float(r[k]) for r in records if r["depth"] == depth for k in SCALARS if k in r
            }
            for lg in loggers:
                lg.log_metrics(flat, step=depth)
        for lg in loggers:
            lg.finalize("success")
    if sweep_name() is None:
        wandb_run.announce()


def diagnose(cfg: DictConfig) -> list[dict]:
    """Run every diagnostic of `cfg`; writes config.yaml and metrics.json to cfg.output_dir and returns the records."""
    spec, seeds, steps, kinds = settings(cfg)
    out_dir = Path(cfg.output_dir)
    record_config(cfg, out_dir)
    torch.manual_seed(cfg.seed)
    records = []
    for variant in variants(build_model(cfg, AS_CONFIGURED.surgery).net, kinds):
        records += diagnose_variant(cfg, variant, spec, seeds, steps, out_dir)
    (out_dir / METRICS_FILE).write_text(json.dumps(records, indent=1))
    log_records(cfg, records)
    return records


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="diagnose")
def app(cfg: DictConfig) -> None:
    """Diagnose one model (see `repinv.cli.run_task` for how bad input and crashes end)."""
    run_task(diagnose, cfg)


def main() -> None:
    """The `repinv-diagnose` command (see `repinv.cli.command`)."""
    command(app, EXAMPLE)


class DiagnoseSweepEnd(Callback):
    """At the end of a `repinv-diagnose -m` sweep: every job's records in one diagnostics.csv in the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        records = [
            dict(r, job=p.parent.name) for p in sorted(sweep_dir.glob(f"*/{METRICS_FILE}")) for r in read_records(p.parent)
        ]
        if records:
            print(
                f"diagnostics of {len(records)} (variant, layer, image) in {write_table(records, sweep_dir / 'diagnostics.csv')}"
            )
        announce_offline_sweep(sorted(sweep_dir.glob(f"*/{OFFLINE_RUNS}")))


if __name__ == "__main__":
    main()
