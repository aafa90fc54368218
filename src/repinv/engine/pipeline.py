"""One run from a composed config: build everything, optimise, write results.

This is the only library module that reads a Hydra config (through `instantiate`); the
pieces it assembles know nothing of Hydra.
"""

from __future__ import annotations

import functools
import logging
import math
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
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Dataset

from repinv.conf import LOOP_OWNED, MIRRORS, respell_key, switches
from repinv.engine.identity import (
    CHANGES_KEY,
    CONFIG_KEY,
    MODULE_KEY,
    RunIdentity,
    check_resume,
    config_identity,
    finished,
    read_checkpoint,
    refuse_finished,
)
from repinv.engine.module import ImageOptimization
from repinv.engine.plugins import build, build_each, called, check_arguments, check_metrics, check_prior, located
from repinv.engine.precision import MATMUL_PRECISIONS, set_matmul_precision
from repinv.engine.runinfo import RunInfo, given_run
from repinv.engine.sharding import ShardedDDP, accelerator_name, process_count, shard_bounds, sharded_strategy
from repinv.engine.validation import check_finite, check_loop_owned, check_mirrors, check_steps, check_switches
from repinv.errors import RepinvError, is_number, is_whole
from repinv.inputs.images import load_images
from repinv.models import LoadedModel
from repinv.models.build import build_model
from repinv.objectives import Objective
from repinv.reporting.callbacks import CHECKPOINT_DIR, LAST_CHECKPOINT, Checkpoints, ResultWriter, StopOnSignal, last_checkpoint
from repinv.reporting.loggers import make_loggers
from repinv.reporting.results import METRICS_FILE, all_finished, read_records
from repinv.reporting.summary import score, sweep_id
from repinv.reporting.wandb_logger import WANDB_ID, WandbFinished

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run leaves for its caller: one record per target, the final images, the run folder and its score.

    `images` are the reconstructions as the network sees them ([targets, 3, H, W] in [0, 1]; None
    on processes other than rank 0, and for a finished run `resume=auto` kept: its PNGs hold them), `score` the number
    a sweeper minimises (NaN without records).
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


def _float32(value) -> bool:
    """A number float32 holds: torch computes with the settings as float32, where a larger one is infinity."""
    return is_number(value) and abs(value) <= torch.finfo(torch.float32).max


def _positive(name: str, value, hint: str) -> None:
    """A positive number that float32 holds (torch steps with it as one)."""
    if not _float32(value) or value <= 0:
        raise RepinvError(f"{name}={value} must be a positive number, at most float32's largest (3.4e38); {hint}")


PRECISIONS = ("32-true", "32", "bf16", "bf16-mixed", "16-mixed", "16")


def validate(cfg: DictConfig) -> None:
    """Check the numbers a run cannot start with, before anything is built."""
    check_finite(cfg)
    check_switches(cfg, switches())
    check_mirrors(cfg, MIRRORS)
    check_loop_owned(cfg.trainer, LOOP_OWNED)
    check_steps("steps", cfg.steps, "the study uses steps=1500 (up to 105000 for slow-converging layers).")
    _positive("optimizer.lr", cfg.optimizer.get("lr"), "the default SGD uses optimizer.lr=0.05.")
    check_steps("log_every", cfg.log_every, "e.g. log_every=25.")
    check_steps("image_every", cfg.get("image_every", 0), "e.g. image_every=100.", zero="the final images alone")
    check_steps("checkpoint_every", cfg.get("checkpoint_every", 0), "e.g. checkpoint_every=500.",
                zero="no periodic checkpoints")
    if not (_float32(cfg.init.mean) and _float32(cfg.init.std) and cfg.init.std >= 0):
        raise RepinvError(f"init.mean={cfg.init.mean} and init.std={cfg.init.std} must be numbers, at most float32's "
                          "largest (3.4e38) in size, std non-negative; the study initialises from N(0.7, 1/20): "
                          "init.mean=0.7 init.std=0.05.")
    if not (is_whole(cfg.seed) and 0 <= cfg.seed < 2**32):
        raise RepinvError(f"seed={cfg.seed} must be a whole number from 0 to 2^32-1 (what torch and numpy seed with); "
                          "e.g. seed=0.")
    _positive("collective_timeout_s", cfg.get("collective_timeout_s", 600),
              "how long a process of a multi-process run waits for the others, e.g. collective_timeout_s=600.")
    if cfg.get("matmul_precision", "highest") not in MATMUL_PRECISIONS:
        raise RepinvError(f"matmul_precision={cfg.matmul_precision} is not a float32 matmul precision torch knows: use "
                          "highest (fp32 throughout, the default), high or medium (TF32 or bf16 matmuls where supported).")
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        why = (" would make the image itself half precision, too coarse for small steps" if precision.endswith("-true")
               else " is not a precision repinv knows")
        raise RepinvError(f"precision={precision}{why}. Use precision=32-true (the default), precision=bf16 "
                          "(bfloat16 steps, fp32 image, targets and metrics) or precision=16-mixed (float16 autocast, GPUs).")
    if precision.startswith("16") and accelerator_name(cfg.trainer.get("accelerator", "auto")) == "cpu":
        raise RepinvError(f"precision={precision} on a CPU: Lightning would run bfloat16 instead while the run's config "
                          "and checkpoint name float16. Use precision=bf16 here (what would run) or precision=32-true; "
                          "16-mixed is for GPUs.")


HYDRA_FILES = ".hydra"


def requeued() -> bool:
    """Whether this is a SLURM job started again after a requeue (submitit's on a time limit, or a preemption)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def resume_path(resume, out_dir: Path) -> Path | None:
    """The checkpoint a run continues from.

    `resume=` is a .ckpt file, a run folder (its checkpoints/last.ckpt), `last` (this run
    folder's) or `auto` (this run folder's if it has one, else none: a fresh run). With
    `resume=null` a requeued SLURM job continues from its own folder's last checkpoint when there
    is one: the requeued job has the same folder, and nothing else reuses one.
    """
    own = last_checkpoint(out_dir)
    if str(resume) == AUTO:
        return own if own.is_file() else None
    if resume is None:
        if requeued() and own.is_file():
            log.info("requeued job: resuming from %s", own)
            return own
        return None
    path = out_dir if str(resume) == "last" else Path(str(resume)).expanduser()
    if path.is_file():
        return path
    for candidate in (last_checkpoint(path), path / LAST_CHECKPOINT):
        if candidate.is_file():
            return candidate
    found = sorted(str(p) for p in path.rglob("*.ckpt"))[:5] if path.is_dir() else []
    there = f"holds only {', '.join(found)}" if found else ("holds no .ckpt file" if path.is_dir() else "does not exist")
    raise RepinvError(
        f"resume={resume} names no checkpoint: there is no {last_checkpoint(path)}, and {path} {there}. "
        "Pass a .ckpt file, the folder of the run to continue (runs save checkpoints/last.ckpt every checkpoint_every "
        "steps and when interrupted), or resume=last together with hydra.run.dir=<that folder>."
    )


AUTO = "auto"  # resume=auto: continue this folder's run, keep it if finished, start it if absent


def holds_run(out_dir: Path) -> bool:
    """Whether `out_dir` holds a run's files (its config, a checkpoint or results)."""
    return any((out_dir / name).exists() for name in ("config.yaml", CHECKPOINT_DIR, METRICS_FILE))


def refuse_unfinished(out_dir: Path) -> None:
    """A fresh run, or one resumed from another folder's checkpoint, in a folder whose checkpoint belongs to an
    unfinished run would overwrite it (and append to its logs): refused."""
    own = last_checkpoint(out_dir)
    if not own.is_file():
        return
    saved = read_checkpoint(own)
    step, steps = saved.get("global_step", 0), (saved.get(MODULE_KEY) or {}).get("steps")
    if steps is not None and step >= steps:
        return
    raise RepinvError(
        f"{out_dir} holds an unfinished run (its checkpoint {own} is at step {step} of {steps}), and another run there would "
        "overwrite it. Continue that run with resume=last and hydra.run.dir set to that folder (with the overrides in its "
        "config.yaml), or start afresh in a new folder (hydra.run.dir=<new folder>, or no hydra.run.dir for a dated one)."
    )


def record_config(cfg: DictConfig, out_dir: Path) -> None:
    """Write the accepted run's settings into its folder: config.yaml (resolved) and Hydra's .hydra/ files.

    Hydra's own copy is switched off (`hydra.output_subdir: null`), as Hydra writes it before the
    job could refuse its settings; here it is written once they are accepted.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    record_hydra(out_dir, cfg)


def record_hydra(out_dir: Path, cfg: DictConfig | None = None) -> None:
    """Hydra's files of this job in `out_dir/.hydra/` (config.yaml, hydra.yaml, overrides.yaml), as Hydra writes them."""
    hc = _hydra()
    if hc is None:
        return
    folder = out_dir / HYDRA_FILES
    folder.mkdir(parents=True, exist_ok=True)
    files = {"hydra.yaml": OmegaConf.create({"hydra": hc}), "overrides.yaml": hc.overrides.task}
    if cfg is not None:
        files["config.yaml"] = cfg
    for name, node in files.items():
        (folder / name).write_text(OmegaConf.to_yaml(node))


def instantiate_callbacks(cfg: DictConfig, run: RunInfo) -> list[pl.Callback]:
    """The callbacks of `cfg.callbacks`, in their order: those whose constructor takes `run` are given the RunInfo;
    progress bars are left out with +trainer.enable_progress_bar=false (Lightning refuses them then)."""
    out = []
    for name, factory in build_each(cfg, "callbacks", _partial_=True).items():
        callback = called(f"callbacks.{name}", cfg.callbacks[name], given_run, factory, run)
        if cfg.trainer.get("enable_progress_bar", True) or not isinstance(callback, ProgressBar):
            out.append(callback)
    return out


def the(callbacks: list, kind: type):
    """The first callback of type `kind`, or None when the config left it out."""
    return next((cb for cb in callbacks if isinstance(cb, kind)), None)


def run_name(label: str, what: str, trained: bool) -> str:
    """Readable run names: model, what was optimised, trained state (e.g. vit_b_32-L5-untrained)."""
    return "-".join([label, what, "trained" if trained else "untrained"])


def _hydra():
    return HydraConfig.get() if HydraConfig.initialized() else None


def sweep_name() -> str | None:
    """Inside a multirun job the W&B group: the sweep folder's name, with the sweep's id where the job carries one (a
    sweep run again in the same folder is a group of its own); else None."""
    hc = _hydra()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    own = sweep_id(Path(hc.runtime.output_dir))
    return "-".join([Path(str(hc.sweep.dir)).name, *([own[:8]] if own else [])])


def job_device(job_num: int, n_gpus: int) -> int:
    """Multirun job k runs on GPU k mod N, so parallel jobs (joblib) spread over the GPUs."""
    return job_num % n_gpus


def processes(cfg: DictConfig) -> int:
    """How many processes the configured trainer runs (see `repinv.engine.sharding.process_count`)."""
    t = cfg.trainer
    devices = t.get("devices", 1)
    devices = OmegaConf.to_container(devices) if isinstance(devices, ListConfig) else devices
    return process_count(t.get("accelerator", "auto"), devices, t.get("num_nodes", 1))


def trainer_overrides(cfg: DictConfig) -> dict:
    """Devices and strategy for this job.

    Several processes (trainer.devices x trainer.num_nodes > 1, resolved as Lightning does) always
    shard the targets through `ShardedDDP` (see `sharded_strategy`). A one-device multirun job on
    a machine with several GPUs takes GPU `job_device(k, N)`.
    """
    t = cfg.trainer
    devices = t.get("devices", 1)
    out = {}
    hc, n_gpus = _hydra(), torch.cuda.device_count()
    if processes(cfg) > 1:
        if hc is not None and hc.mode == RunMode.MULTIRUN and "SLURM_NTASKS" not in os.environ:
            raise RepinvError(
                f"trainer.devices={devices} inside a local multirun: Lightning would start the extra processes by "
                "re-running the whole sweep command. Run the sweep with hydra/launcher=slurm (tasks_per_node="
                "gpus_per_node=N, SLURM starts the processes), or run single jobs with trainer.devices=N."
            )
        strategy = sharded_strategy(t.get("strategy", "auto"), cfg.get("collective_timeout_s", 600))
        out.update(use_distributed_sampler=False)  # every rank takes every step
        if strategy is not None:
            out.update(strategy=strategy)
    if (devices == 1 and n_gpus > 1 and hc is not None and hc.mode == RunMode.MULTIRUN
            and t.get("accelerator", "auto") in ("auto", "gpu", "cuda")):
        out.update(accelerator="gpu", devices=[job_device(int(hc.job.num), n_gpus)])
    return out


def check_shares(cfg: DictConfig, module: ImageOptimization) -> None:
    """What a run on several processes cannot do, refused before the run folder is written: more processes than
    targets, and L-BFGS, whose curvature history and line search span the whole batch, not one process's share."""
    world = processes(cfg)
    if world == 1:
        return
    shard_bounds(len(module.targets), 0, world)
    target = located("optimizer", cfg.optimizer)
    if isinstance(target, type) and issubclass(target, torch.optim.LBFGS):
        raise RepinvError(
            f"optimizer=lbfgs with {world} processes (trainer.devices x trainer.num_nodes): L-BFGS keeps one curvature "
            "history and one line search for the whole image batch, so each process would step its share differently "
            "from a one-process run, and a checkpoint would hold one process's history only. Run L-BFGS on one "
            "process (trainer.devices=1), or use another optimizer (optimizer=sgd or adam) on several."
        )


def resume_state(cfg: DictConfig, ckpt: Path | None, module: ImageOptimization) -> tuple[dict, list[dict], dict]:
    """The run's identity (see `repinv.engine.identity`), the changes allowed against the checkpoint, and the
    checkpoint itself ({} when starting afresh); a checkpoint of another run is refused."""
    identity = config_identity(cfg)
    if ckpt is None:
        return identity, [], {}
    saved = respelled(read_checkpoint(ckpt))
    given = cfg.get("resume_allow_changes") or []
    allowed = [respell_key(str(a)) for a in ([given] if isinstance(given, str) else given)]  # one field, unbracketed
    changes = check_resume(ckpt, saved, identity, module.identity(), allowed)
    if finished(saved, module.identity()) and str(cfg.get("resume")) != AUTO:
        refuse_finished(ckpt, module.identity())
    return identity, changes, saved


def kept(out_dir: Path, metric: str) -> RunResult:
    """`resume=auto` on a run that finished with these settings: its results as they are, counted by a sweep now
    running in its folder (their date is this job's, see `repinv.reporting.summary.join_sweep`)."""
    try:
        complete = all_finished(out_dir)
    except (OSError, ValueError):
        complete = False
    if not complete:
        raise RepinvError(f"{out_dir} holds a finished run's checkpoint but no finished results ({METRICS_FILE}), so "
                          "resume=auto can neither keep nor continue it. Start it afresh in a new folder "
                          "(hydra.run.dir=<new folder>).")
    os.utime(out_dir / METRICS_FILE)
    log.info("resume=auto: %s finished with these settings before; its results are kept", out_dir)
    records = read_records(out_dir)
    return RunResult(records, None, out_dir, score(records, metric))


def respelled(checkpoint: dict) -> dict:
    """A checkpoint whose saved identity and changes name settings by former names (`regularizer.` before `priors.`),
    spelled as the config now spells them: a run saved before a rename resumes."""
    identity = {respell_key(k): v for k, v in checkpoint.get(CONFIG_KEY, {}).items()}
    changes = [{**c, "field": respell_key(c["field"])} for c in checkpoint.get(CHANGES_KEY, [])]
    return {**checkpoint, CONFIG_KEY: identity, CHANGES_KEY: changes}


def fit(trainer: pl.Trainer, module: ImageOptimization, ckpt: Path | None, stopper: StopOnSignal | None) -> None:
    """`trainer.fit` over one dummy batch per step, from the checkpoint when resuming. A second signal stops the run
    at once, and Lightning then exits 1 without the stopper's teardown: the run ends as one stopped by the signal."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
        # each step's batch is only its index: where a resumed run's dataloader restarts changes nothing
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        try:
            trainer.fit(module, train_dataloaders=DataLoader(Steps(module.steps), batch_size=None),
                        ckpt_path=str(ckpt) if ckpt else None)
        except SIGTERMException:  # several processes: Lightning's own SIGTERM handling, which would exit 0
            await_started(trainer)
            raise SystemExit(128 + signal.SIGTERM) from None
        except SystemExit:
            await_started(trainer)
            if stopper is None or not stopper.received:
                raise
            stopper.end(trainer.global_step)
        except BaseException:
            await_started(trainer)
            raise
        finally:
            if stopper is not None:
                stopper.restore()


def await_started(trainer: pl.Trainer) -> None:
    """After a failure of a run on several processes: the processes this one started have ended (see
    `ShardedDDP.await_started`)."""
    if isinstance(trainer.strategy, ShardedDDP):
        trainer.strategy.await_started()


# The lengths in steps torch's schedulers take (CosineAnnealingLR's T_max, LinearLR's total_iters, StepLR's step_size,
# the warm restarts' T_0): torch accepts a negative or fractional one and runs a schedule that makes no sense.
SCHEDULE_LENGTHS = ("T_max", "total_iters", "step_size", "T_0")


def check_schedule(cfg: DictConfig, optimizer, scheduler) -> None:
    """Build the optimiser on a throwaway parameter and step the scheduler on it through the run: a setting their
    constructors or steps refuse (a negative momentum, end_factor=2), which Lightning's fit would meet only after the
    run folder is written, is one paragraph naming optimizer or scheduler now; so is a schedule length that is not a
    positive whole number of steps, and a learning rate the schedule takes below 0 (a step up the loss) or to NaN."""
    opt = called("optimizer", cfg.optimizer, optimizer, [torch.nn.Parameter(torch.zeros(1))])
    if scheduler is None:
        return
    for key in SCHEDULE_LENGTHS:
        if key in cfg.scheduler:
            check_steps(f"scheduler.{key}", cfg.scheduler[key], "the scheduler configs count in steps, e.g. "
                        f"scheduler.{key}=${{steps}} (the run's length).")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler steps without optimiser steps
        sched = called("scheduler", cfg.scheduler, scheduler, opt)
        for step in range(1, cfg.steps + 1):  # Lightning steps it after every step, the last included
            called("scheduler", cfg.scheduler, sched.step)
            if step < cfg.steps:
                _rate_at(cfg, step, sched.get_last_lr())


def _rate_at(cfg: DictConfig, step: int, rates: list[float]) -> None:
    """One paragraph if the schedule's learning rate at `step` is negative or not a number."""
    for rate in rates:
        if not (math.isfinite(rate) and rate >= 0):
            raise RepinvError(
                f"scheduler (_target_={cfg.scheduler.get('_target_')}) takes the learning rate to {rate:.4g} at step "
                f"{step} of {cfg.steps}: a negative rate steps up the loss and a NaN one ends the image. Give the "
                "schedule a floor of 0 or more (scheduler.eta_min=0, scheduler.end_factor in (0, 1]), or use "
                "scheduler=constant."
            )


def build_module(cfg: DictConfig) -> tuple[LoadedModel, Objective, ImageOptimization]:
    """The model (after surgery) and objective of `cfg`, and the step module over them, its images, optimiser, priors
    and metrics: all built and checked."""
    model = build_model(cfg)
    objective = build(cfg.objective)
    images = load_images(cfg.image, model.input_size) if objective.needs_images else []
    metrics = build_each(cfg, "metrics")
    check_metrics(metrics, model.input_size)
    optimizer, scheduler = build(cfg.optimizer), build(cfg.scheduler) if cfg.get("scheduler") else None
    check_schedule(cfg, optimizer, scheduler)
    module = ImageOptimization(
        model=model,
        objective=objective,
        images=images,
        optimizer=optimizer,
        scheduler=scheduler,
        priors=list(build_each(cfg, "priors", check_prior).values()),
        param=functools.partial(called, "param", cfg.param, build(cfg.param)),
        metrics=metrics,
        steps=cfg.steps,
        init_mean=cfg.init.mean,
        init_std=cfg.init.std,
        log_every=cfg.log_every,
        seed=cfg.seed,
        compile=cfg.get("compile", False),
    )
    objective.check(model.net, model.input_size)
    return model, objective, module


def score_metric(cfg: DictConfig, module: ImageOptimization) -> str:
    """The record field a sweep optimises: `optimized_metric`, else the objective's; refused before the run when the
    records would not hold it as a number (every job of a sweep would score NaN)."""
    metric = cfg.get("optimized_metric") or module.objective.score_metric
    numbers = (*module.measuring.fields, *ResultWriter.NUMBERS)
    if metric not in numbers:
        raise RepinvError(f"optimized_metric={metric} is not a number this run's records hold, so every job of a sweep "
                          f"would score NaN. Use one of {', '.join(numbers)}, and set hydra.sweeper.direction to match.")
    return metric


def exit_stopped(stopper: StopOnSignal, checkpoints: Checkpoints | None, steps: int, out_dir: Path) -> None:
    """A run a signal stopped: say where its results are and how to continue it, then exit as the signal asks."""
    hc = _hydra()
    resume = ("the run had finished" if stopper.stopped_at >= steps else "no checkpoint (callbacks.checkpoints=null)"
              if not checkpoints else f"continue with resume={checkpoints.last}" if sweep_name() is None else
              f"continue the sweep with the same command and resume=auto hydra.sweep.dir={hc.sweep.dir}")
    print(f"repinv: {signal.Signals(stopper.signum).name} at step {stopper.stopped_at} of {steps}: results in "
          f"{out_dir}, {resume}", file=sys.stderr)
    stopper.exit()


def run(cfg: DictConfig) -> RunResult:
    """Run the configured objective; returns its records, images, folder and score.

    Everything is built and checked (settings, plug-ins, the checkpoint to resume) before the run
    folder is written, so a refused run leaves an existing folder as it was.
    """
    validate(cfg)
    out_dir = Path(cfg.output_dir)
    ckpt = resume_path(cfg.get("resume"), out_dir)
    if ckpt is None or ckpt.resolve() != last_checkpoint(out_dir).resolve():
        refuse_unfinished(out_dir)
    pl.seed_everything(cfg.seed, verbose=False)
    set_matmul_precision(cfg.get("matmul_precision", "highest"))
    model, objective, module = build_module(cfg)
    metric = score_metric(cfg, module)
    overrides = trainer_overrides(cfg)
    check_shares(cfg, module)
    check_arguments("trainer", cfg.trainer, "logger", "callbacks", "max_steps", *overrides)
    name = run_name("-".join([model.label, *model.surgery]), objective.name(), model.trained)
    tags = [model.label, "trained" if model.trained else "untrained", objective.kind, *model.surgery, *objective.tags()]
    identity, changes, saved = resume_state(cfg, ckpt, module)
    if saved and finished(saved, module.identity()):
        return kept(out_dir, metric)
    info = RunInfo(name, tags, objective.kind, group=sweep_name(), resume_id=saved.get(WANDB_ID),
                   resume_step=saved.get("global_step"), changes=changes)
    callbacks = instantiate_callbacks(cfg, info)
    record_config(cfg, out_dir)
    loggers = make_loggers(cfg, info)
    with WandbFinished() as wandb_run:
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        writer, checkpoints, stopper = the(callbacks, ResultWriter), the(callbacks, Checkpoints), the(callbacks, StopOnSignal)
        trainer = build(
            cfg.trainer,
            "trainer",
            logger=loggers or False,
            callbacks=[*callbacks, RunIdentity(identity, changes)],
            max_steps=cfg.steps,
            **overrides,
        )
        fit(trainer, module, ckpt, stopper)
    if trainer.is_global_zero and sweep_name() is None:
        wandb_run.announce()
    if stopper is not None and stopper.stopped_at is not None:
        exit_stopped(stopper, checkpoints, cfg.steps, out_dir)
    records, images = (writer.records, writer.images) if writer else ([], None)
    return RunResult(records, images, out_dir, score(records, metric))
