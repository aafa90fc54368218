"""One run from a composed config: build everything, optimise, write results.

This is the only library module that reads a Hydra config (through `instantiate`); the
pieces it assembles know nothing of Hydra.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Dataset

from repinv.callbacks import (
    LAST_CHECKPOINT, Checkpoints, FilterGrid, ImageTimeline, ResultTable, ResultWriter, StopOnSignal,
)
from repinv.errors import RepinvError
from repinv.images import load_images
from repinv.models.surgery import apply_surgery
from repinv.module import ImageOptimization
from repinv.progress import StepsProgressBar
from repinv.sharding import ShardedDDP
from repinv.summary import score

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run leaves for its caller: one record per target, the final images, the run folder and its score.

    `images` are the reconstructions as the network sees them ([targets, 3, H, W] in [0, 1]; None
    on processes other than rank 0), `score` the number a sweeper minimises (NaN without records).
    """

    records: list[dict]
    images: torch.Tensor | None
    out_dir: Path
    score: float


class Steps(Dataset):
    """One dummy batch per step: the image is the parameter, Trainer.max_steps ends the run."""

    def __init__(self, steps: int):
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> int:
        return i


def _positive(name: str, value, hint: str) -> None:
    if value is None or not isinstance(value, (int, float)) or value <= 0:
        raise RepinvError(f"{name}={value} must be a positive number; {hint}")


PRECISIONS = ("32-true", "32", "bf16", "bf16-mixed", "16-mixed", "16")


def validate(cfg: DictConfig) -> None:
    """Check the numbers a run cannot start with, before anything is built."""
    _positive("steps", cfg.steps, "the study uses steps=1500 (up to 105000 for slow-converging layers).")
    _positive("optimizer.lr", cfg.optimizer.get("lr"), "the default SGD uses optimizer.lr=0.05.")
    _positive("log_every", cfg.log_every, "e.g. log_every=25.")
    if cfg.init.std < 0:
        raise RepinvError(f"init.std={cfg.init.std} must be non-negative; the study initialises from N(0.7, 1/20).")
    every = cfg.get("checkpoint_every", 0)
    if not isinstance(every, int) or every < 0:
        raise RepinvError(f"checkpoint_every={every} must be a whole number of steps, or 0 for no periodic "
                          "checkpoints; e.g. checkpoint_every=500.")
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        why = (" would make the image itself half precision, too coarse for small steps" if precision.endswith("-true")
               else " is not a precision repinv knows")
        raise RepinvError(f"precision={precision}{why}. Use precision=32-true (the default), precision=bf16 "
                          "(bfloat16 steps, fp32 image, targets and metrics) or precision=16-mixed (float16 autocast, GPUs).")


CHECKPOINT_DIR = "checkpoints"


def requeued() -> bool:
    """Whether this is a SLURM job started again after a requeue (submitit's on a time limit, or a preemption)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def resume_path(resume, out_dir: Path) -> Path | None:
    """The checkpoint a run continues from.

    `resume=` is a .ckpt file, a run folder (its checkpoints/last.ckpt) or `last` (this run
    folder's). With `resume=null` a requeued SLURM job continues from its own folder's last
    checkpoint when there is one: the requeued job has the same folder, and nothing else reuses one.
    """
    own = out_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if resume is None:
        if requeued() and own.is_file():
            log.info("requeued job: resuming from %s", own)
            return own
        return None
    path = out_dir if str(resume) == "last" else Path(str(resume)).expanduser()
    if path.is_file():
        return path
    for candidate in (path / CHECKPOINT_DIR / LAST_CHECKPOINT, path / LAST_CHECKPOINT):
        if candidate.is_file():
            return candidate
    found = sorted(str(p) for p in path.rglob("*.ckpt"))[:5] if path.is_dir() else []
    there = f"holds only {', '.join(found)}" if found else ("holds no .ckpt file" if path.is_dir() else "does not exist")
    raise RepinvError(
        f"resume={resume} names no checkpoint: there is no {path / CHECKPOINT_DIR / LAST_CHECKPOINT}, and {path} {there}. "
        "Pass a .ckpt file, the folder of the run to continue (runs save checkpoints/last.ckpt every checkpoint_every "
        "steps and when interrupted), or resume=last together with hydra.run.dir=<that folder>."
    )


def check_checkpoint(path: Path, module: ImageOptimization) -> None:
    """Refuse a checkpoint written by a run with other targets, steps or image size, before Lightning loads it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # as Lightning loads it right after
        saved = checkpoint.get("repinv")
    except Exception as err:
        raise RepinvError(f"resume={path} could not be read as a checkpoint ({type(err).__name__}: {err}). "
                          "Pass a checkpoints/last.ckpt written by repinv, or start afresh without resume=.") from None
    mine = module.run_identity()
    if saved != mine:
        diff = ", ".join(f"{k}: {saved.get(k) if saved else None} there, {mine[k]} here" for k in mine
                         if not saved or saved.get(k) != mine[k])
        raise RepinvError(
            f"resume={path} was written by a different run ({diff}). Resume with the overrides of the run that wrote "
            "it (its config.yaml); steps must be the same because the blur and learning-rate schedules depend on them."
        )
    if checkpoint.get("global_step", 0) >= module.steps:
        raise RepinvError(
            f"resume={path}: that run already finished its {module.steps} steps, so there is nothing to continue; its "
            "results are in its folder. For a longer run start a new one with more steps (the schedules depend on them)."
        )


def build(node, **kwargs):
    """`instantiate`, letting a RepinvError raised inside the target through unwrapped (Hydra wraps it)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, RepinvError):
            raise err.__cause__ from None
        raise


def build_each(cfg: DictConfig, group: str) -> dict:
    """Build every entry of the mapping `cfg.<group>` (name -> config with `_target_`) in its order; null entries are left out."""
    node = cfg.get(group) or {}
    for name, entry in node.items():
        if entry is not None and not (isinstance(entry, DictConfig) and "_target_" in entry):
            raise RepinvError(f"{group}.{name}={entry} is not something to build: each entry of {group} is a mapping "
                              f"with a _target_ (e.g. +{group}.{name}._target_=package.module.name), or null to leave it out.")
    return {name: build(entry) for name, entry in node.items() if entry is not None}


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return list(value)
    return [value]


def run_name(cfg: DictConfig, kind: str, label: str, trained: bool) -> str:
    """Readable run names: model, what was inverted, trained state (e.g. vit_b_32-L5-untrained)."""
    if kind == "layer":
        what = "+".join(f"L{x}" if isinstance(x, int) else str(x) for x in _as_list(cfg.layers))
    else:
        what = "+".join(str(c) for c in _as_list(cfg.get("classes")))
    return "-".join([label, what, "trained" if trained else "untrained"])


def make_loggers(cfg: DictConfig, name: str, tags: list[str], job_type: str) -> list:
    """Instantiate the configured loggers; a logger that fails to start is dropped with a warning."""
    loggers = []
    for key, lcfg in (cfg.logger or {}).items():
        if lcfg is None:
            continue
        is_wandb = "Wandb" in str(lcfg.get("_target_", ""))
        extra = {"name": name, "tags": tags, "job_type": job_type} if is_wandb else {}
        if is_wandb and lcfg.get("group") is None and sweep_name():
            extra["group"] = sweep_name()  # one dashboard group per sweep
        try:
            lg = instantiate(lcfg, **extra)
            if is_wandb:
                lg.experiment  # start the W&B run now so a failure is caught here
        except Exception as err:  # W&B failures must not cost the run
            warnings.warn(f"logger '{key}' could not start ({type(err).__name__}: {err}); continuing with local logs only")
            continue
        loggers.append(lg)
    return loggers


def finish_wandb() -> Path | None:
    """End the W&B run of this job so the next multirun job gets its own; returns an offline run's folder."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return None
    offline = Path(run.settings.sync_dir) if run.offline else None
    try:
        wandb.finish()
    except Exception as err:  # W&B failures must not cost the run: its local files are written
        warnings.warn(f"W&B could not finish the run ({type(err).__name__}: {err}); the local logs and results are complete")
        return None
    return offline


def _hydra():
    return HydraConfig.get() if HydraConfig.initialized() else None


def sweep_name() -> str | None:
    """The sweep folder's name inside a multirun job (the W&B group), else None."""
    hc = _hydra()
    return Path(str(hc.sweep.dir)).name if hc is not None and hc.mode == RunMode.MULTIRUN else None


def job_device(job_num: int, n_gpus: int) -> int:
    """Multirun job k runs on GPU k mod N, so parallel jobs (joblib) spread over the GPUs."""
    return job_num % n_gpus


def trainer_overrides(cfg: DictConfig) -> dict:
    """Devices and strategy for this job.

    Several processes (trainer.devices x trainer.num_nodes > 1) shard the targets through
    `ShardedDDP` unless a strategy is given. A one-device multirun job on a machine with several
    GPUs takes GPU `job_device(k, N)`.
    """
    t = cfg.trainer
    devices = t.get("devices", 1)
    per_node = len(devices) if isinstance(devices, (list, ListConfig)) else devices
    out = {}
    hc, n_gpus = _hydra(), torch.cuda.device_count()
    if isinstance(per_node, int) and per_node * int(t.get("num_nodes", 1)) > 1 and t.get("strategy", "auto") == "auto":
        if hc is not None and hc.mode == RunMode.MULTIRUN and "SLURM_NTASKS" not in os.environ:
            raise RepinvError(
                f"trainer.devices={devices} inside a local multirun: Lightning would start the extra processes by "
                "re-running the whole sweep command. Run the sweep with hydra/launcher=slurm (tasks_per_node="
                "gpus_per_node=N, SLURM starts the processes), or run single jobs with trainer.devices=N."
            )
        out.update(strategy=ShardedDDP(), use_distributed_sampler=False)  # every rank takes every step
    if (devices == 1 and n_gpus > 1 and hc is not None and hc.mode == RunMode.MULTIRUN
            and t.get("accelerator", "auto") in ("auto", "gpu", "cuda")):
        out.update(accelerator="gpu", devices=[job_device(int(hc.job.num), n_gpus)])
    return out


def run(cfg: DictConfig) -> RunResult:
    """Run the configured objective; returns its records, images, folder and score."""
    validate(cfg)
    out_dir = Path(cfg.output_dir)
    ckpt = resume_path(cfg.get("resume"), out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, verbose=False)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))

    model = apply_surgery(build(cfg.model), {k: build(op) for k, op in (cfg.get("surgery") or {}).items()})
    objective = build(cfg.objective)
    images = load_images(cfg.image, model.input_size) if objective.kind == "layer" else []
    module = ImageOptimization(
        model=model,
        objective=objective,
        images=images,
        optimizer=build(cfg.optimizer),
        scheduler=build(cfg.scheduler) if cfg.get("scheduler") else None,
        priors=list(build_each(cfg, "regularizer").values()),
        param=build(cfg.param),
        metrics=build_each(cfg, "metrics"),
        steps=cfg.steps,
        init_mean=cfg.init.mean,
        init_std=cfg.init.std,
        log_every=cfg.log_every,
        seed=cfg.seed,
        compile=cfg.get("compile", False),
    )
    name = run_name(cfg, objective.kind, "-".join([model.label, *model.surgery]), model.trained)
    tags = [model.label, "trained" if model.trained else "untrained", objective.kind, *model.surgery]
    if objective.kind == "layer":
        tags += [f"layer:{x}" for x in _as_list(cfg.get("layers"))]
    else:
        tags += [f"class:{r['class']}" for r in objective.records if r["image"] == "sample0"]
    overrides = trainer_overrides(cfg)
    if ckpt is not None:
        if isinstance(overrides.get("strategy"), ShardedDDP):
            raise RepinvError(f"resume={cfg.resume}: runs on several processes save no checkpoints and cannot resume; "
                              "resume with trainer.devices=1 trainer.num_nodes=1.")
        check_checkpoint(ckpt, module)
    loggers = make_loggers(cfg, name, tags, objective.kind)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    writer = ResultWriter(out_dir, title=name)
    checkpoints, stopper = Checkpoints(out_dir / CHECKPOINT_DIR, cfg.get("checkpoint_every", 0)), StopOnSignal()
    trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=[writer, ResultTable(writer), ImageTimeline(cfg.image_every), FilterGrid(out_dir), checkpoints, stopper,
                   *([StepsProgressBar()] if cfg.trainer.get("enable_progress_bar", True) else [])],
        max_steps=cfg.steps,
        **overrides,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        try:
            trainer.fit(module, train_dataloaders=DataLoader(Steps(cfg.steps), batch_size=None),
                        ckpt_path=str(ckpt) if ckpt else None)
        except SIGTERMException:  # several processes: Lightning's own SIGTERM handling, which would exit 0
            raise SystemExit(128 + signal.SIGTERM) from None
        finally:
            offline = finish_wandb()
    if offline is not None and trainer.is_global_zero and sweep_name() is None:
        print(f"W&B offline run: upload it with `wandb sync {offline}`")
    if stopper.stopped_at is not None:
        print(f"repinv: {signal.Signals(stopper.signum).name} at step {stopper.stopped_at} of {cfg.steps}: results in "
              f"{out_dir}, continue with resume={checkpoints.last}", file=sys.stderr)
        stopper.exit()
    default = "rank" if writer.records and "rank" in writer.records[0] else "output_l2"  # class generation: the class's rank
    return RunResult(writer.records, writer.images, out_dir, score(writer.records, cfg.get("optimized_metric") or default))
