"""W&B, the one place that knows it: a Lightning WandbLogger given the run's RunInfo, the run's end, its id in checkpoints.

A resumed run (`resume=`, a requeued SLURM job) continues its W&B run under the same id (stored
in the checkpoint). The W&B run is finished on every path out of a job, marked failed when the
job failed, so the next job of a sweep never logs into it.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_only

from repinv.engine.runinfo import RunInfo

WANDB_ID = "wandb_run_id"  # the checkpoint's key for the W&B run a resumed run continues
STEP_KEY = "trainer/global_step"  # the column Lightning's WandbLogger logs each row's step under
OFFLINE_RUNS = "wandb/offline-run-*"  # in a run folder: the folders of its offline W&B runs
LAST_STEP = "repinv-last-step"  # written into an offline run's folder once W&B finished it: the last step it holds


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger with the run's name, tags and job type, the sweep as group when the config names
    none, and the W&B run a resumed run continues. The W&B run starts here, so a failure is caught where the
    loggers are built."""

    def __init__(self, run: RunInfo | None = None, group: str | None = None, **kwargs):
        if run is not None:
            kwargs.update(name=run.name, tags=run.tags, job_type=run.kind)
            group = group or run.group
            if run.resume_id:
                kwargs.update(id=run.resume_id, resume="allow")
        super().__init__(group=group, **kwargs)
        self.experiment

    @rank_zero_only
    def replay(self, rows: list[tuple[int, dict]]) -> None:
        """Log a resumed run's earlier rows that this W&B run does not hold: those after the last step its summary
        knows online (the server's) or an earlier offline segment finished with; an offline writer killed with its
        process keeps no rows and finishes nothing, so its rows are logged again."""
        last = max([self.experiment.summary.get(STEP_KEY, -1), *finished_offline_steps(self.experiment)])
        for step, metrics in rows:
            if step > last:
                self.log_metrics(metrics, step=step)


def finished_offline_steps(run) -> list[int]:
    """The last steps of this W&B run's earlier offline segments that W&B finished (and so wrote to disk)."""
    if not run.offline:
        return []
    folders = Path(run.settings.sync_dir).parent.glob(f"offline-run-*-{run.id}")
    return [int((folder / LAST_STEP).read_text()) for folder in folders if (folder / LAST_STEP).is_file()]


def finish_wandb(exit_code: int = 0) -> Path | None:
    """End the W&B run of this job so the next multirun job gets its own; returns an offline run's folder.

    A non-zero `exit_code` marks the run failed.
    """
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return None
    offline = Path(run.settings.sync_dir) if run.offline else None
    last = run.summary.get(STEP_KEY)
    try:
        wandb.finish(exit_code=exit_code)
    except Exception as err:  # W&B failures must not cost the run: its local files are written
        warnings.warn(f"W&B could not finish the run ({type(err).__name__}: {err}); the local logs and results are complete")
        return None
    if offline is not None and last is not None:
        (offline / LAST_STEP).write_text(str(int(last)))
    return offline


class WandbFinished:
    """`with WandbFinished() as w:` around everything after the loggers start: the W&B run ends on
    every path out, with exit code 0, the code of a SystemExit, or 1 for any other exception
    (W&B shows the job failed). `w.offline` is then the offline run's folder, if any."""

    def __enter__(self) -> WandbFinished:
        self.offline: Path | None = None
        return self

    def __exit__(self, kind, err, tb) -> bool:
        code = 0 if err is None else err.code if isinstance(err, SystemExit) and isinstance(err.code, int) else 1
        self.offline = finish_wandb(code)
        return False

    def announce(self) -> None:
        """Print how to upload the offline run this block ended, if it was one."""
        if self.offline is not None:
            print(f"W&B offline run: upload it with `wandb sync {self.offline}`")


def announce_offline_sweep(runs: list[Path]) -> None:
    """Print how to upload a sweep's offline W&B runs (the folders of those its jobs left), if there are any."""
    if runs:
        print(f"W&B offline runs: upload with `wandb sync {' '.join(str(run) for run in runs)}`")


class WandbRunId(pl.Callback):
    """Store the W&B run's id in each checkpoint, so a run resumed from it continues that W&B run."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        ids = [lg.experiment.id for lg in trainer.loggers if isinstance(lg, LightningWandbLogger) and trainer.is_global_zero]
        if ids:
            checkpoint[WANDB_ID] = ids[0]
