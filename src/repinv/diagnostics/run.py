"""`repinv-diagnose`: why a layer cannot be inverted, per (model variant, layer, image).

A thin Hydra entry point over `diagnose(cfg)` (the shell `repinv` has: `repinv.cli.command` and
`repinv.cli.run_task`), which builds the model as `repinv` does (`repinv.models.build.build_model`), and for
every normalisation variant, layer and image measures the Jacobian's spectrum
(`repinv.diagnostics.spectrum`) and the non-uniqueness of K seeded inversions
(`repinv.diagnostics.nonunique`). The run folder holds config.yaml and metrics.json (one record
per variant, layer and image), written after every variant and when a signal or a crash stops the
diagnosis (`Progress`); `resume=last` continues a diagnosis in its folder. The configured loggers
get every measure per layer.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from repinv.cli import CONFIG_PATH, SweepSummary, command, run_task
from repinv.diagnostics.ablation import AS_CONFIGURED, Variant, check_ablations, variants
from repinv.diagnostics.nonunique import INVERSION_PSNR, seed_inversions
from repinv.diagnostics.spectrum import SpectrumSettings, layer_function, spectrum
from repinv.diagnostics.table import write_table
from repinv.engine.identity import config_identity
from repinv.engine.pipeline import record_config, sweep_name, validate
from repinv.engine.runinfo import RunInfo
from repinv.errors import RepinvError, is_whole
from repinv.inputs.images import load_images
from repinv.metrics import PSNR, require
from repinv.models import LoadedModel
from repinv.models.build import build_model
from repinv.models.taps import resolve_layers
from repinv.reporting.loggers import make_loggers
from repinv.reporting.results import (
    FINISHED,
    INTERRUPTED,
    METRICS_FILE,
    all_finished,
    finite_or_none,
    read_records,
    write_json_atomic,
)
from repinv.reporting.summary import find_jobs, written_by_jobs
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
        oversample=_whole("oversample", d.oversample, 0, "16"),
        power_iters=_whole("power_iters", d.power_iters, 0, "6"),
        lanczos_steps=_whole("lanczos_steps", d.lanczos_steps, 1, "24"),
        small_k=_whole("small_k", d.small_k, 1, "4"),
        rank_tol=float(tol),
        probe_batch=_whole("probe_batch", d.probe_batch, 1, "16"),
        seed=int(cfg.seed),
    )
    if cfg.get("resume") not in (None, "last"):
        raise RepinvError(
            f"resume={cfg.resume}: repinv-diagnose continues a diagnosis in its own folder only; use resume=last with "
            "hydra.run.dir=<the diagnosis' folder> and the diagnosis' overrides (its .hydra/overrides.yaml)."
        )
    seeds, steps = nonuniqueness(cfg, d.get("nonunique"))
    return spec, seeds, steps, check_ablations(d.get("norm_ablation"))


def nonuniqueness(cfg: DictConfig, node) -> tuple[int, int]:
    """The checked seeds K and inversion steps of `diagnostics.nonunique`; null is none, as norm_ablation=null is."""
    if node is None:
        return 0, 0
    if not isinstance(node, DictConfig):
        raise RepinvError(
            f"diagnostics.nonunique={node} must hold seeds and steps, e.g. diagnostics.nonunique.seeds=3 "
            "diagnostics.nonunique.steps=1500, or be null (like diagnostics.nonunique.seeds=0) for none."
        )
    seeds = _whole("nonunique.seeds", node.get("seeds"), 0, "3")
    if seeds == 1:
        raise RepinvError(
            "diagnostics.nonunique.seeds=1 gives no pair to compare; use 0 (no non-uniqueness) or at least 2, e.g. 3."
        )
    if cfg.seed + seeds - 1 >= 2**32:
        raise RepinvError(
            f"seed={cfg.seed} with diagnostics.nonunique.seeds={seeds} would seed inversions up to {cfg.seed + seeds - 1}, "
            f"past 2^32-1 (what torch and numpy seed with); use seed={2**32 - seeds} or less."
        )
    steps = _whole("nonunique.steps", node.get("steps"), 1, "1500 (the study's recipe)")
    if seeds:
        require(cfg, "the non-uniqueness diagnostic (diagnostics.nonunique.seeds > 0)", PSNR)
    return seeds, steps


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


def diagnose_variant(cfg: DictConfig, variant: Variant, spec: SpectrumSettings, seeds: int, steps: int, out_dir: Path,
                     progress: Progress) -> list[dict]:
    """Spectral and non-uniqueness records of one model variant; its spectra go to `progress` before the inversions."""
    model = build_model(cfg, variant.surgery)
    rows = [{"model": model.label, "trained": model.trained, "variant": variant.name, **r} for r in spectra(cfg, model, spec)]
    progress.measured(rows)
    if seeds:
        folder = out_dir / "inversions" / variant.name
        found = {
            (r["layer"], r["image"]): r
            for r in seed_inversions(cfg, list(range(cfg.seed, cfg.seed + seeds)), steps, folder, variant.surgery,
                                     resume=cfg.get("resume") == "last")
        }
        rows = [{**r, **{k: v for k, v in found[(r["layer"], r["image"])].items() if k not in r}} for r in rows]
    return rows


def log_records(cfg: DictConfig, records: list[dict]) -> None:
    """Every scalar measure to the configured loggers, at step = the layer's position in `layers`."""
    label = records[0]["model"] if records else "model"
    loggers = make_loggers(cfg, RunInfo(f"{label}-diagnose", [label, "diagnose"], "diagnose", group=sweep_name()))
    with WandbFinished() as wandb_run:
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        for depth in sorted({r["depth"] for r in records}):
            flat = {
                f"{k}/{r['variant']}/{r['image']}": float(r[k])
                for r in records if r["depth"] == depth for k in SCALARS if r.get(k) is not None  # null: kept, not finite
            }
            for lg in loggers:
                lg.log_metrics(flat, step=depth)
        for lg in loggers:
            lg.finalize("success")
    if sweep_name() is None:
        wandb_run.announce()


PENDING = "pending"  # a record's status while the diagnosis runs: its variant is still to be finished
CRASHED = "crashed"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM during a diagnosis; a seeded inversion's `StopOnSignal` hands it on once the inversion saved."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum, frame) -> None:
    raise Stopped(signum)


class Progress:
    """A diagnosis under way, in metrics.json (atomically, non-finite numbers as null, as `repinv` writes them) from
    its start: the records of the variants finished (status finished), then the spectra measured of the variant under
    way, else one record naming it, and one record per variant to come (status pending). A signal or a crash writes
    those with status interrupted or crashed and says how to continue; the folder holds a finished diagnosis only when
    every record finished (`finished_diagnosis`). As a context manager it makes SIGINT and SIGTERM raise `Stopped`
    (SIGTERM would otherwise end the process without a word) and ends a stop with exit code 128 + the signal."""

    def __init__(self, out_dir: Path, todo: list[Variant], kept: dict[str, list[dict]]):
        self.out_dir, self.total = out_dir, len(todo)
        self.done = [r for v in todo for r in kept.get(v.name, [])]
        self.todo = [v for v in todo if v.name not in kept]
        self.current: list[dict] = []
        self.previous: dict = {}

    def write(self, status: str = PENDING) -> None:
        later = [{"variant": v.name} for v in self.todo]
        unfinished = [*self.current, *later[1:]] if self.current else later
        records = [*self.done, *({**r, "status": status} for r in unfinished)]
        write_json_atomic(self.out_dir / METRICS_FILE, [{k: finite_or_none(v) for k, v in r.items()} for r in records])

    def measured(self, rows: list[dict]) -> None:
        """The spectra of the variant under way, kept while its inversions run."""
        self.current = rows
        self.write()

    def finished(self, rows: list[dict]) -> None:
        """The records of the variant under way, finished."""
        self.done += [{**r, "status": FINISHED} for r in rows]
        self.todo.pop(0)
        self.current = []
        self.write()

    def __enter__(self) -> Progress:
        if threading.current_thread() is threading.main_thread():  # only there can handlers be set
            self.previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
            for s in STOP_SIGNALS:
                signal.signal(s, _stop)
        self.write()
        return self

    def __exit__(self, kind, err, tb) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        if err is None:
            return
        status = INTERRUPTED if isinstance(err, (KeyboardInterrupt, SystemExit)) else CRASHED
        self.write(status)
        print(self.stopped(err, status), file=sys.stderr)
        if isinstance(err, Stopped):
            raise SystemExit(128 + err.signum) from None

    def stopped(self, err: BaseException, status: str) -> str:
        """What stopped the diagnosis, what metrics.json keeps and how to continue."""
        cause = str(err) if isinstance(err, Stopped) else "a signal" if isinstance(err, (KeyboardInterrupt, SystemExit)) \
            else type(err).__name__
        where = f" in variant {self.todo[0].name} ({self.total - len(self.todo) + 1} of {self.total})" if self.todo else ""
        return (f"repinv-diagnose: {cause}{where}: {self.out_dir / METRICS_FILE} keeps the {len(self.done)} records of "
                f"the finished variants, the others marked {status}. Continue the diagnosis with the same overrides "
                f"and resume=last hydra.run.dir={self.out_dir}: it keeps the finished variants and diagnoses the "
                "others, their seeded inversions continuing from their checkpoints where they saved one.")


def finished_diagnosis(folder: Path) -> bool:
    """Whether `folder` holds a finished diagnosis (or run): every record of its metrics.json finished (`all_finished`),
    or none has a status, as in diagnoses that wrote metrics.json only once they had finished (committed ledgers')."""
    return all_finished(folder) or ((folder / METRICS_FILE).is_file() and not any("status" in r for r in read_records(folder)))


def kept_variants(cfg: DictConfig, out_dir: Path) -> dict[str, list[dict]]:
    """With resume=last, the records of each variant the diagnosis in `out_dir` finished; refused when that diagnosis
    had other settings. Without, {}; a folder that holds an unfinished diagnosis is refused, as `repinv` refuses a
    folder with an unfinished run: a new diagnosis there would overwrite it."""
    config = out_dir / "config.yaml"
    if cfg.get("resume") is None:
        if config.is_file() and not finished_diagnosis(out_dir):
            raise RepinvError(
                f"{out_dir} holds an unfinished diagnosis (or run), and another there would overwrite it. Continue it "
                f"with resume=last and hydra.run.dir={out_dir} (with the overrides in its .hydra/overrides.yaml), or "
                "start afresh in a new folder (hydra.run.dir=<new folder>, or no hydra.run.dir for a dated one)."
            )
        return {}
    if not config.is_file():
        raise RepinvError(f"resume=last: {out_dir} holds no diagnosis to continue (no config.yaml); set hydra.run.dir "
                          "to the folder of the diagnosis, or leave resume out to start one.")
    was, now = config_identity(OmegaConf.load(config)), config_identity(cfg)
    differ = [k for k in dict.fromkeys([*was, *now]) if (k in was, was.get(k)) != (k in now, now.get(k))]
    if differ:
        raise RepinvError(
            f"resume=last: the diagnosis in {out_dir} has other settings "
            f"({'; '.join(f'{k}: {was.get(k)} there, {now.get(k)} here' for k in differ[:4])}"
            f"{'; ...' if len(differ) > 4 else ''}). Continue it with its overrides (its .hydra/overrides.yaml), or "
            "start afresh in a new folder (hydra.run.dir=<new folder>)."
        )
    kept: dict[str, list[dict]] = {}
    for r in read_records(out_dir) if (out_dir / METRICS_FILE).is_file() else []:
        if r.get("status") == FINISHED:
            kept.setdefault(r["variant"], []).append(r)
    return kept


def diagnose(cfg: DictConfig) -> list[dict]:
    """Run every diagnostic of `cfg`; writes config.yaml and metrics.json to cfg.output_dir (metrics.json as it goes,
    `Progress`) and returns the records."""
    spec, seeds, steps, kinds = settings(cfg)
    out_dir = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    net = build_model(cfg, AS_CONFIGURED.surgery).net
    resolve_layers(net, cfg.get("layers"))  # bad layers are refused before the folder is written, as `repinv` does
    kept = kept_variants(cfg, out_dir)
    record_config(cfg, out_dir)
    with Progress(out_dir, variants(net, kinds), kept) as progress:
        for variant in list(progress.todo):
            progress.finished(diagnose_variant(cfg, variant, spec, seeds, steps, out_dir, progress))
    log_records(cfg, progress.done)
    return progress.done


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="diagnose")
def app(cfg: DictConfig) -> None:
    """Diagnose one model (see `repinv.cli.run_task` for how bad input and crashes end)."""
    run_task(diagnose, cfg)


def main() -> None:
    """The `repinv-diagnose` command (see `repinv.cli.command`)."""
    command(app, EXAMPLE)


class DiagnoseSweepEnd(SweepSummary):
    """A `repinv-diagnose -m` sweep: at its start its id, as `repinv -m` gives one (`SweepSummary`); at its end, or
    when its launcher fails, the records of its own jobs (not those an earlier sweep left in the folder, `find_jobs`)
    in one diagnostics.csv in the sweep folder, each job that did not finish named with its error, and exit 1 if there
    is one, as `repinv -m`."""

    def summarize(self, planned: list[list[str]] | None = None) -> bool:
        jobs = find_jobs(self.sweep_dir, planned)
        records = [dict(r, job=j.path.name) for j in jobs if j.records for r in read_records(j.path)]
        if records:
            table = write_table(records, self.sweep_dir / "diagnostics.csv")
            print(f"diagnostics of {len(records)} (variant, layer, image) in {table}")
        failed = [j for j in jobs if j.status != FINISHED]
        for j in failed:
            print(f"  job {j.path.name} ({j.condition}) {j.status}: {j.error}")
        announce_offline_sweep(written_by_jobs(jobs, OFFLINE_RUNS))
        return bool(failed)


if __name__ == "__main__":
    main()
