"""The run's loggers: a CSV log that a resumed run continues, and a W&B run that ends with its job.

A resumed run (`resume=`, a requeued SLURM job) keeps one history: the CSV log keeps its rows
from before the resume point and the W&B run continues under the same id (stored in the
checkpoint). The W&B run is finished on every path out of a job, marked failed when the job
failed, so the next job of a sweep never logs into it.
"""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

WANDB_ID = "wandb_run_id"  # the checkpoint's key for the W&B run a resumed run continues


class ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, which deletes an existing metrics.csv, continuing it instead.

    The file's rows at steps before this run's first logged step stay (a resumed run's history);
    those at or after it are dropped, as this run logs them anew. A fresh run's first row is at
    step 0, so it starts a new file as before. Nothing is dropped before that first row.
    """

    def _check_log_dir_exists(self) -> None:
        self.earlier_file = self._fs.isfile(self.metrics_file_path)

    def log_metrics(self, metrics_dict: dict, step: int | None = None) -> None:
        if self.earlier_file:
            self._keep_rows_before(step or 0)
            self.earlier_file = False
        super().log_metrics(metrics_dict, step)

    def _keep_rows_before(self, step: int) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if r.get("step") and int(float(r["step"])) < step]
            header = list(reader.fieldnames or [])
        if not rows:
            self._fs.rm_file(self.metrics_file_path)
            return
        with self._fs.open(self.metrics_file_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = header  # the columns save() appends under


class CSVLogger(pl.loggers.CSVLogger):
    """Lightning's CSVLogger with `ContinuedWriter`: a resumed run appends to its `metrics.csv`."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuedWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedWriter(log_dir=self.log_dir)
        return self._experiment


def make_loggers(cfg: DictConfig, name: str, tags: list[str], job_type: str, group: str | None = None,
                 wandb_id: str | None = None) -> list:
    """Instantiate the configured loggers; a logger that fails to start is dropped with a warning.

    `group`: the W&B group when the config names none (the sweep); `wandb_id`: the W&B run to
    continue (a resumed run's), else W&B starts a new one.
    """
    loggers = []
    for key, lcfg in (cfg.logger or {}).items():
        if lcfg is None:
            continue
        is_wandb = "Wandb" in str(lcfg.get("_target_", ""))
        extra = {"name": name, "tags": tags, "job_type": job_type} if is_wandb else {}
        if is_wandb and lcfg.get("group") is None and group:
            extra["group"] = group  # one dashboard group per sweep
        if is_wandb and wandb_id:
            extra.update(id=wandb_id, resume="allow")
        try:
            lg = instantiate(lcfg, **extra)
            if is_wandb:
                lg.experiment  # start the W&B run now so a failure is caught here
        except Exception as err:  # W&B failures must not cost the run
            warnings.warn(f"logger '{key}' could not start ({type(err).__name__}: {err}); continuing with local logs only")
            continue
        loggers.append(lg)
    return loggers


def finish_wandb(exit_code: int = 0) -> Path | None:
    """End the W&B run of this job so the next multirun job gets its own; returns an offline run's folder.

    A non-zero `exit_code` marks the run failed.
    """
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return None
    offline = Path(run.settings.sync_dir) if run.offline else None
    try:
        wandb.finish(exit_code=exit_code)
    except Exception as err:  # W&B failures must not cost the run: its local files are written
        warnings.warn(f"W&B could not finish the run ({type(err).__name__}: {err}); the local logs and results are complete")
        return None
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


class WandbRunId(pl.Callback):
    """Store the W&B run's id in each checkpoint, so a run resumed from it continues that W&B run."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        ids = [lg.experiment.id for lg in trainer.loggers if isinstance(lg, WandbLogger) and trainer.is_global_zero]
        if ids:
            checkpoint[WANDB_ID] = ids[0]
