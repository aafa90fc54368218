"""What a checkpoint must agree on to be resumed: the run's identity, taken from its resolved config.

Every setting of the resolved config is part of the identity (model, weights, surgery, seed,
objective, init, priors, optimiser, scheduler, steps, image, layers, classes, precision, ...),
except the run-only ones in `RUN_ONLY`, which say how and where a run executes and logs, not
what it computes: the run folder, loggers, the resume settings themselves, how often it logs,
draws and checkpoints, devices, `compile` (the same computation, compiled) and `debug`. A
resume that differs anywhere else is refused, naming each field; `resume_allow_changes=[field,
...]` lets named fields (or whole subtrees: `optimizer`) change, the change is kept in the
checkpoint and in metrics.json (`resumed_with_changes`), and the new values apply: the module
is built from the new config, and new optimiser and scheduler settings replace those the
checkpoint restores (their kinds, `KINDS`, cannot change: the checkpoint holds their state).
What defines the targets or the saved parameter can never change (`FIXED`:
the model and its surgery, the photographs, layers, classes and units, the objective's kind and
baseline noise, the seed, the starting noise, the parametrisation, the steps), nor the module's
own identity (targets, steps, canvas): the saved image and the schedules depend on them.
A built-in model source or CPU kernel choice counts by its short name (`model.source: timm`), whether
the config names it so or by its `_target_`: one choice is one identity, in old checkpoints too.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from repinv.engine.validation import flatten
from repinv.errors import RepinvError, SettingsError, listing, suggest
from repinv.models.factory import builtin_name
from repinv.objectives import target_key

CONTINUATION = ("resume", "resume_allow_changes")  # how a run continues an earlier one, never what it computes
RUN_ONLY = (
    "output_dir", "logger", "callbacks", *CONTINUATION, "log_every", "image_every", "checkpoint_every",
    "debug", "compile", "optimized_metric", "collective_timeout_s", "hydra", "trainer.devices", "trainer.accelerator",
    "trainer.num_nodes", "trainer.strategy", "trainer.default_root_dir", "trainer.log_every_n_steps",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.enable_checkpointing", "trainer.num_sanity_val_steps",
)
FIXED = (
    "model", "surgery", "image", "layers", "classes", "seed", "init", "param", "steps", "objective._target_",
    "objective.layers", "objective.layer", "objective.classes", "objective.units", "objective.samples", "objective.noise_std",
)
# The optimiser's and scheduler's kinds: the checkpoint holds their state (momentum, Adam's moments, the schedule's
# position), which another kind cannot take up, so a change of kind is refused even where their settings may change.
KINDS = ("optimizer._target_", "scheduler._target_")
CONFIG_KEY, CHANGES_KEY, MODULE_KEY = "repinv_config", "resumed_with_changes", "repinv"


def _under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def short_names(value):
    """`value` (a config as containers) with each node naming a built-in plug-in by `_target_` alone as its short name."""
    if isinstance(value, dict):
        return builtin_name(value) or {k: short_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [short_names(v) for v in value]
    return value


def config_identity(cfg: DictConfig) -> dict:
    """The resolved config as {dotted key: value}, without the run-only fields."""
    return {k: v for k, v in flatten(short_names(OmegaConf.to_container(cfg, resolve=True))) if not _under(k, RUN_ONLY)}


def read_checkpoint(path: Path) -> dict:
    """The checkpoint as Lightning will load it (a dict), or a RepinvError saying it is not one."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        saved, why = None, f"{type(err).__name__}: {err}"
    else:
        why = f"it holds a {type(saved).__name__}, not a dict"
    if not isinstance(saved, dict):
        raise RepinvError(f"resume={path} could not be read as a checkpoint ({why}). "
                          "Pass a checkpoints/last.ckpt written by repinv, or start afresh without resume=.")
    return saved


def _short(values: dict, key: str) -> str:
    text = str(values[key]) if key in values else "absent"
    return text if len(text) <= 60 else text[:57] + "..."


def module_identity(targets: list[dict], steps: int, image_shape: tuple[int, ...], param: str) -> dict:
    """What a checkpoint must agree on besides the config: the targets, the steps, the canvas and its parametrisation."""
    return {"targets": [target_key(t) for t in targets], "steps": steps, "canvas": list(image_shape[1:]), "param": param}


def check_resume(path: Path, checkpoint: dict, config: dict, module: dict, allowed: list[str]) -> list[dict]:
    """Refuse a checkpoint of another run (SettingsError naming each differing field); returns the allowed changes
    as {field, was, now, step}, earlier resumes' first."""
    saved = {**checkpoint.get(CONFIG_KEY, {}), **(checkpoint.get(MODULE_KEY) or {})}
    mine = {**config, **module}
    fixed = [a for a in allowed if _under(a, FIXED) or any(_under(f, [a]) for f in FIXED)]
    if fixed:
        raise SettingsError(
            f"resume_allow_changes={listing(fixed)} would change what the run optimises: {listing(FIXED)} define its "
            "targets and saved image, so a run that changes them is a new run. Start it afresh in a new folder "
            "(hydra.run.dir=<new folder>), or resume with the same settings; resume_allow_changes may name the "
            "optimiser, scheduler, priors, metrics, precision and the objective's loss and scale.", fixed)
    unknown = [a for a in allowed if not any(_under(k, [a]) for k in (*saved, *mine))]
    if unknown:
        raise SettingsError(
            f"resume_allow_changes names {listing(unknown)}, which the checkpoint does not compare.{suggest(unknown[0], mine)} "
            f"Name settings of the run (e.g. resume_allow_changes=[optimizer.lr]); run-only settings "
            f"({listing(RUN_ONLY, 8)}) may change on resume anyway.", unknown)
    differ = [k for k in dict.fromkeys([*saved, *mine]) if (k in saved, saved.get(k)) != (k in mine, mine.get(k))]
    refused = [k for k in differ if k in module or _under(k, FIXED) or k in KINDS or not _under(k, allowed)]
    if refused:
        diff = "; ".join(f"{k}: {_short(saved, k)} there, {_short(mine, k)} here" for k in refused)
        fixed = [k for k in refused if k in module or _under(k, FIXED)]
        kinds = [k for k in refused if k in KINDS]
        forcible = [k for k in refused if k not in fixed and k not in kinds]
        advice = [f"or allow those changes deliberately with resume_allow_changes=[{','.join(forcible)}]" if forcible else ""]
        if fixed:
            advice.append(f"{listing(fixed)} cannot change on resume, as they define the targets and the saved image "
                          "(start a new run in a new folder, hydra.run.dir=<new folder>, for those)")
        if kinds:
            advice.append(f"{listing(kinds)} cannot change on resume, as the checkpoint holds the state of that kind of "
                          "optimiser or scheduler (momentum, Adam's moments, the schedule's position); their settings "
                          "may change, another kind needs a new run in a new folder")
        raise SettingsError(
            f"resume={path} was written by a different run ({diff}). Resume with the overrides of the run that wrote "
            f"it (its config.yaml); {'; '.join(a for a in advice if a)}.", refused)
    step = checkpoint.get("global_step", 0)
    return [*checkpoint.get(CHANGES_KEY, []), *({"field": k, "was": saved.get(k), "now": mine.get(k), "step": step}
                                               for k in differ)]


def finished(checkpoint: dict, module: dict) -> bool:
    """Whether the checkpoint's run made every one of its steps."""
    return checkpoint.get("global_step", 0) >= module["steps"]


def refuse_finished(path: Path, module: dict) -> None:
    raise RepinvError(
        f"resume={path}: that run already finished its {module['steps']} steps, so there is nothing to continue; its "
        "results are in its folder. For a longer run start a new one with more steps (the schedules depend on them); "
        "resume=auto keeps a finished run's results (a sweep run again in its folder)."
    )


class RunIdentity(pl.Callback):
    """Keeps the run's config identity and its resume changes in every checkpoint, and applies the
    changes of this resume to the optimiser and scheduler state the checkpoint restored."""

    def __init__(self, config: dict, changes: list[dict]):
        self.config, self.changes = config, changes

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config
        checkpoint[CHANGES_KEY] = self.changes

    def on_train_start(self, trainer, pl_module) -> None:
        """After Lightning restored the optimiser and schedulers (and before the first step): this resume's
        changes (those at the checkpoint's step; earlier resumes' are in the restored state already)."""
        now = {c["field"]: c["now"] for c in self.changes if c["step"] == trainer.global_step}
        if not now:
            return
        keys = {k.partition(".")[2] for k in now if k.startswith("optimizer.")}
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                for key in keys & opt.defaults.keys():
                    if key == "lr" and "initial_lr" in group:  # a scheduler scales lr from initial_lr: keep its factor
                        group["lr"] *= opt.defaults["lr"] / group["initial_lr"]
                        group["initial_lr"] = opt.defaults["lr"]
                    else:
                        group[key] = opt.defaults[key]
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            sched.base_lrs = [g.get("initial_lr", g["lr"]) for g in sched.optimizer.param_groups]
            sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]
            for field, value in now.items():
                key = field.partition(".")[2]
                if field.startswith("scheduler.") and hasattr(sched, key):
                    setattr(sched, key, value)
            restart(sched)


def restart(sched) -> None:
    """Put the rate where the scheduler's settings, as they are now, place it at its step. A chainable scheduler
    (LinearLR) scales the last rate step by step, so a changed setting would otherwise bend the path from the rate
    the old settings reached, ending at neither schedule's value."""
    closed_form = getattr(sched, "_get_closed_form_lr", None)
    if closed_form is None:
        return
    for group, lr in zip(sched.optimizer.param_groups, closed_form()):
        group["lr"] = lr
    sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]
