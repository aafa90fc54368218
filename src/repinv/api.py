"""`repinv.run`: the `repinv` command as a Python call, for notebooks and scripts.

Hydra composes and runs the job exactly as the command does (same configs and defaults, run
folder `logs/runs/<date>_<time>/` under the current folder unless `hydra.run.dir=` is given,
`.hydra/`, log file, `${hydra:...}` resolved); the job itself is `job`, shared with the command.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from repinv.conf import NEUTRAL, group_options, respell_all
from repinv.engine import pipeline
from repinv.errors import RepinvError, listing, suggest

CONFIG_MODULE = "repinv.conf"
CONFIG_NAME = "config"
# Hydra names the command's job after its module (cli.py); the call uses the same name, so
# both write the run's log to `cli.log`.
JOB_NAME = "cli"
CTRL_C = 128 + signal.SIGINT  # how a run stopped by Ctrl+C exits the command


@contextmanager
def warnings_to_log() -> Iterator[None]:
    """Send warnings (bf16 emulated, a logger that failed) to the logging system, so they reach the run's log file.

    Ended with the job: a second job in the same process (tests, a notebook) captures anew.
    """
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)


@contextmanager
def callers_state() -> Iterator[None]:
    """Put back what a job sets for the whole process: the root logger's handlers and level (Hydra's job logging
    replaces them with the run's console and `cli.log`), torch's fp32 matmul precision and cuDNN's TF32 switch (the
    run's `matmul_precision`). The command's process ends with its job; a notebook goes on with its own settings."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    matmul, tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()  # the run's log file
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = tf32


def job(cfg: DictConfig) -> pipeline.RunResult:
    """One job from a composed config: what the command and `run` both execute inside Hydra."""
    with warnings_to_log():
        return pipeline.run(cfg)


RUN_EXAMPLE = 'repinv.run(["model=vit_tiny", "layers=[0,1]", "steps=100"])'


def composition_error(err: ConfigCompositionException | OverrideParseException, overrides: list[str],
                      example: str = RUN_EXAMPLE) -> RepinvError:
    """Hydra's refusal of the overrides as one paragraph; for an unknown group option, the group's options."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        options = err.options or GlobalHydra.instance().config_loader().get_group_options(group)
        return RepinvError(f"{group}={name}: there is no config '{name}' in the group '{group}'."
                           f"{suggest(name, options)} The options are: {listing(options)}.")
    reason = " ".join(str(err).split())
    paths = isinstance(err, OverrideParseException) and any("/" in o.partition("=")[2] for o in overrides)
    return RepinvError(
        f"The overrides {overrides} do not compose ({reason}). Overrides are Hydra's key=value strings, "
        f"one per item, e.g. {example}; a key the config does not have is added with a leading +."
        + (" A path with spaces, parentheses, brackets, ~ or letters beyond ASCII goes in quotes inside its override, "
           "e.g. 'image=\"~/photos/café (1).png\"'." if paths else "")
    )


FOLDER_ERRORS = (NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)


def refusal_of(err: Exception, overrides: list[str], example: str = RUN_EXAMPLE) -> RepinvError | None:
    """What a failure of Hydra's run means to the user as one paragraph, where it is bad input rather than a crash:
    overrides that do not compose, a run folder that cannot be written, a setting a config leaves for the user."""
    if isinstance(err, (ConfigCompositionException, OverrideParseException)):
        return composition_error(err, overrides, example)
    if isinstance(err, FOLDER_ERRORS):
        return RepinvError(
            f"{err.filename} cannot be created or written ({err.strerror}). Give the run a folder that can be: "
            "hydra.run.dir=<folder> (a sweep: hydra.sweep.dir=<folder>), not one inside a file or a read-only place.")
    if isinstance(err, MissingMandatoryValue):
        return RepinvError(
            f"{err.full_key} has no value: its config leaves it to the command line (???). Set it, e.g. "
            f"{err.full_key}=<value>, with the rest of the overrides.")
    return None


def refuse_null_groups(overrides: Sequence[str]) -> None:
    """`group=null` (Hydra picks a group's config by name and ends in a traceback on null) as a RepinvError saying how
    to leave the group out (`logger=none`) or, where no option does, which options there are."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException:
        return  # Hydra refuses the malformed override itself
    for override in parsed:
        options = group_options(override.key_or_group)
        if override.value() is not None or override.is_delete() or not options:
            continue
        group = override.key_or_group
        if "none" in options:
            instead = f"To leave {group} out use {group}=none."
        else:
            name, what = NEUTRAL.get(group, (None, None))
            instead = (f"{group} cannot be left out{f'; {group}={name} gives {what}' if name else ''}. "
                       f"The options are: {listing(options)}.")
        raise RepinvError(f"{override.input_line}: a config group is chosen by the name of one of its configs, and null "
                          f"names none. {instead}")


def refuse_sweeps(overrides: Sequence[str]) -> None:
    """`hydra.mode=MULTIRUN` as a RepinvError: a call runs one job (Hydra itself fails on an assertion)."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "hydra.mode" and value.strip().upper() != "RUN":
            raise RepinvError(f"{override}: repinv.run runs one job. Run a sweep with the command, e.g. repinv -m "
                              "seed=0,1,2 (hydra.mode=MULTIRUN there too), or call repinv.run once per setting.")


def run(overrides: Sequence[str] = ()) -> pipeline.RunResult:
    """Run one job as `repinv OVERRIDES...` would, in this process; returns its records, images and folder.

    Former names in the overrides are spelled anew (`repinv.conf.respell`: `regularizer.` is `priors.`).
    Bad input (an unknown config or key, a malformed override, values the run refuses) raises
    `RepinvError`; Ctrl+C stops the run after a step, writes its results and raises KeyboardInterrupt. Each call
    composes afresh, so it can be called again in the same process; a Hydra the caller initialised, its logging and
    torch's precision settings are put back afterwards.
    """
    if isinstance(overrides, str):
        raise RepinvError(f"repinv.run({overrides!r}): pass the overrides as a list of strings, one per "
                          f"override, e.g. repinv.run({overrides.split()!r}).")
    overrides = respell_all(overrides)
    refuse_null_groups(overrides)
    refuse_sweeps(overrides)
    caller = get_gh_backup()  # a notebook's own hydra.initialize, or a Hydra app calling this
    GlobalHydra.instance().clear()
    try:
        with callers_state(), initialize_config_module(config_module=CONFIG_MODULE, job_name=JOB_NAME, version_base="1.3"):
            try:
                return GlobalHydra.instance().hydra.run(config_name=CONFIG_NAME, task_function=job,
                                                        overrides=overrides).return_value
            except SystemExit as stop:
                if stop.code == CTRL_C:  # the results are written: the caller sees what Ctrl+C raises in Python
                    raise KeyboardInterrupt from None
                raise
            except Exception as err:
                refusal = refusal_of(err, list(overrides))
                if refusal is None:
                    raise
                raise refusal from None
    finally:
        restore_gh_from_backup(caller)
