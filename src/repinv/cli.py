"""The `repinv` command: a thin Hydra entry point over `repinv.engine.pipeline.run`, and the shell every repinv
Hydra command shares (`repinv-diagnose` too): `run_task` around the job, `command` around the Hydra app."""

from __future__ import annotations

import logging
import math
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from repinv.api import CONFIG_MODULE, CONFIG_NAME, job, refusal_of, refuse_null_groups
from repinv.conf import respell_all
from repinv.engine.pipeline import holds_run, record_hydra
from repinv.errors import RepinvError, RunAborted, paragraph
from repinv.reporting.results import ERROR_FILE
from repinv.reporting.summary import join_sweep, report as summary_report, start_sweep, summarize, written_by_jobs
from repinv.reporting.wandb_logger import OFFLINE_RUNS, announce_offline_sweep

log = logging.getLogger("repinv")

# The configs ship inside the package, so a wheel installed anywhere finds them.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
FULL_ERROR = "HYDRA_FULL_ERROR"
CLI_EXAMPLE = "repinv model=vit_tiny 'layers=[0,1]' steps=100"


def report(err: RepinvError, out_dir: str | None, multirun: bool, cfg: DictConfig) -> None:
    """Print the user's error as one paragraph and keep it, with Hydra's files and the job's config, beside the run's
    other files (a sweep's summary reads them: the config names the cells the job would have filled). A single run
    leaves a folder that holds an earlier run as it was; a sweep's job keeps its error there too, so the summary
    reports this job as failed."""
    text = paragraph("repinv", err)
    print(text, file=sys.stderr)
    if out_dir and (multirun or not holds_run(Path(out_dir))):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / ERROR_FILE).write_text(str(err) + "\n")
        record_hydra(Path(out_dir), cfg)


def run_task(task: Callable[[DictConfig], object], cfg: DictConfig):
    """One Hydra job of a command: `task(cfg)`'s value, or None when it failed inside a multirun.

    A single run ends bad input with a one-paragraph error and exit code 2, and a process stopped by another
    one's failure (`RunAborted`) with a one-paragraph error and exit code 1 (debug=true: the traceback). In a
    multirun a failing job must not end the sweep (SystemExit would stop it, and any exception skips the sweep's
    end), so the job leaves `error.txt` and the sweep goes on.
    """
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:  # Hydra's files first: a job that dies before it records its config still names its condition
        record_hydra(Path(hc.runtime.output_dir), cfg)
        join_sweep(hc.sweep.dir, hc.runtime.output_dir)
    elif hc.sweeper.get("params"):
        log.warning("this config sweeps %s, but a run without -m is one job with the defaults; run the sweep with "
                    "repinv -m ...", ", ".join(hc.sweeper.params))
    debug = cfg.get("debug") is True  # debug=abc is bad input, refused as such
    try:
        return task(cfg)
    except RepinvError as err:
        if debug:
            raise
        report(err, hc.runtime.output_dir, multirun, cfg)
        if not multirun:
            sys.exit(2)
    except Exception as err:
        if not multirun:
            if isinstance(err, RunAborted) and not debug:
                print(paragraph("repinv", err), file=sys.stderr)
                sys.exit(1)
            raise
        log.exception("job %s crashed; the sweep goes on", hc.job.num)
        Path(hc.runtime.output_dir, ERROR_FILE).write_text(
            traceback.format_exc().strip().splitlines()[-1] + "\n\n" + traceback.format_exc()
        )
    return None


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def app(cfg: DictConfig) -> float | None:
    """Run one job and return its score, what Hydra's Optuna sweeper optimises; None where a job of a multirun failed
    or has no score, which the sweeper counts as a failed trial (a NaN would end the search)."""
    result = run_task(job, cfg)
    return None if result is None or math.isnan(result.score) else result.score


def command(hydra_app: Callable[[], object], example: str) -> None:
    """A Hydra app as a command: its overrides with former names spelled anew (`repinv.conf.respell`), and
    Hydra's own refusals of the command line (an unknown option such as param=bogus, an unknown key, a
    malformed override, a group set to null) as one paragraph and exit 2.

    Hydra prints these itself and exits 1 unless HYDRA_FULL_ERROR is set; set for the app's
    duration, they reach this function as exceptions.
    """
    sys.argv[1:] = respell_all(sys.argv[1:])  # Hydra reads them there
    try:
        refuse_null_groups(sys.argv[1:])
    except RepinvError as err:
        print(paragraph("repinv", err), file=sys.stderr)
        sys.exit(2)
    previous = os.environ.get(FULL_ERROR)
    os.environ[FULL_ERROR] = "1"
    try:
        hydra_app()
    except Exception as err:  # bad input: one paragraph, exit 2; a crash (or bad input with debug=true): the traceback
        refusal = refusal_of(err, sys.argv[1:], example)
        if refusal is not None and previous:
            raise
        if refusal is None:
            if SweepSummary.running is None or previous:
                traceback.print_exc()
            else:
                end_broken_sweep(SweepSummary.running, err)
            sys.exit(1)
        print(paragraph("repinv", refusal), file=sys.stderr)
        sys.exit(2)
    finally:
        if previous is None:
            os.environ.pop(FULL_ERROR, None)
        else:
            os.environ[FULL_ERROR] = previous


def main() -> None:
    """The `repinv` command (see `command`)."""
    command(app, CLI_EXAMPLE)


class SweepSummary(Callback):
    """At the start of a multirun its id (its jobs carry it) and its planned jobs; at the end the summary of its jobs,
    the W&B sync command for their offline runs, exit 1 if a job failed. `running` is the sweep this process has under
    way: a launcher that fails (a job process killed) skips the end, and `command` ends the sweep through it then."""

    running: SweepSummary | None = None
    planned: list[list[str]] | None = None  # each planned job's overrides, set at the sweep's start (None: unknown)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.planned = planned_jobs(config.hydra)
        SweepSummary.running = self
        start_sweep(self.sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        SweepSummary.running = None
        if self.summarize():
            sys.exit(1)

    def summarize(self, planned: list[list[str]] | None = None) -> bool:
        """Write and print the summary of the sweep's own jobs (with `planned`, also those that never started); whether
        one of them failed."""
        out = summarize_sweep(self.sweep_dir, planned)
        return out is not None and bool(out["failed"])


def planned_jobs(hydra_cfg: DictConfig) -> list[list[str]] | None:
    """Each job's overrides, in job order, where the sweeper fixes its jobs up front (Hydra's basic sweeper: the
    cartesian product of its params and the command's overrides); None where it picks them as it goes (Optuna)."""
    if hydra_cfg.sweeper._target_ != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":  # by name: Hydra imports its own copy
        return None
    params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return BasicSweeper.split_arguments(parser.parse_overrides([*params, *hydra_cfg.overrides.task]), None)[0]


def summarize_sweep(sweep_dir: Path, planned: list[list[str]] | None = None) -> dict | None:
    """Write and print the summary of the sweep in `sweep_dir` and the W&B sync command for its offline runs."""
    try:
        out = summarize(sweep_dir, planned)
    except FileNotFoundError as err:
        log.warning("no sweep summary: %s", err)
        return None
    print(summary_report(out))
    announce_offline_sweep(written_by_jobs(out["jobs"], OFFLINE_RUNS))
    return out


def end_broken_sweep(sweep: SweepSummary, err: Exception) -> None:
    """The launcher failed (a job's process was killed, out of memory or by a signal): one paragraph, then the sweep's
    summary of what the jobs left, those without results and those that never started marked failed (where the
    sweeper planned its jobs up front; an Optuna search had not yet picked them)."""
    SweepSummary.running = None
    first = (str(err).strip().splitlines() or [""])[0]
    reason = f"{type(err).__name__}: {first[:200]}{'...' if len(first) > 200 else ''}"
    others = ("the summary below marks the others failed, those that never started too" if sweep.planned is not None
              else "the summary below marks the others that started failed; the jobs this sweeper had yet to pick "
                   "are unknown, so it lists none of them")
    print(paragraph("repinv", f"the sweep in {sweep.sweep_dir} stopped: its launcher failed ({reason}). The jobs that "
                              f"finished kept their results; {others}. Set HYDRA_FULL_ERROR=1 for the traceback."),
          file=sys.stderr)
    sweep.summarize(sweep.planned)


if __name__ == "__main__":
    main()
