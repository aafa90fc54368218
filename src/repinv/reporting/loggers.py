"""The run's loggers, built from `cfg.logger`, and a CSV log that a resumed run continues.

Every logger is given the run's `RunInfo` when its constructor asks for `run`, and maps it to its
own terms (W&B's in `repinv.reporting.wandb_logger`, the one place that knows W&B). A resumed run
(`resume=`, a requeued SLURM job) keeps one history: the CSV log keeps its rows from before
the resume point, and a logger with a `replay(rows)` method is given them, so one that lost rows
with its process (W&B's offline writer, after SIGKILL) gets them back.
"""

from __future__ import annotations

import csv
import warnings

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from repinv.engine.runinfo import RunInfo, given_run


def rows_before(fs, path: str, step: int) -> tuple[list[dict], list[str]]:
    """The rows of the CSV log at `path` (on the filesystem `fs`) logged at steps before `step`, and its header: what a
    run resumed at `step` keeps, and what it replays."""
    with fs.open(path, "r", newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r.get("step") and int(float(r["step"])) < step]
        return rows, list(reader.fieldnames or [])


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
        rows, header = rows_before(self._fs, self.metrics_file_path, step)
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


def make_loggers(cfg: DictConfig, run: RunInfo) -> list:
    """Instantiate the configured loggers, each given `run` when it asks for it; a logger that fails to start is
    dropped with a warning (a logger's failure must not cost the run)."""
    loggers = []
    for key, lcfg in (cfg.logger or {}).items():
        if lcfg is None:
            continue
        try:
            loggers.append(given_run(instantiate(lcfg, _partial_=True), run))
        except Exception as err:
            warnings.warn(f"logger '{key}' could not start ({type(err).__name__}: {err}); continuing with local logs only")
    earlier = logged_before(loggers, run.resume_step)
    for lg in loggers:
        if earlier and hasattr(lg, "replay"):
            lg.replay(earlier)
    return loggers


def logged_before(loggers: list, step: int | None) -> list[tuple[int, dict]]:
    """(step, metrics) of the CSV log's rows before `step` (a resumed run's checkpoint), in order; [] without one."""
    csv_logger = next((lg for lg in loggers if isinstance(lg, pl.loggers.CSVLogger)), None)
    path = csv_logger and f"{csv_logger.log_dir}/{ExperimentWriter.NAME_METRICS_FILE}"
    if step is None or csv_logger is None or not csv_logger._fs.isfile(path):
        return []
    rows, _ = rows_before(csv_logger._fs, path, step)
    return [(int(float(r.pop("step"))), {k: float(v) for k, v in r.items() if v not in ("", None)}) for r in rows]
