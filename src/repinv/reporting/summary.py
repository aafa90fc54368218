"""Sweep summary: one figure, one plot and one table for all jobs of a multirun.

`repinv-summary SWEEP_DIR` (also run by the CLI when a multirun ends) reads every job folder's
`metrics.json`, PNGs and `.hydra/overrides.yaml` and writes into the sweep folder:
`summary.png` (rows: the swept conditions, columns: the target then each record's `column`,
e.g. each layer), `summary_metrics.png` (the compared metrics, `repinv.metrics.COMPARED`: PSNR and
SSIM, against column, one line per condition),
`summary.csv` (every field of the records) and `summary.md`. A job without a finished, readable
`metrics.json` shows as failed, with its error, in the columns its objective planned.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from hydra.utils import get_class
from omegaconf import OmegaConf
from PIL import Image

from repinv.conf import override_key
from repinv.engine.identity import CONTINUATION
from repinv.errors import paragraph
from repinv.metrics import COMPARED, axis_label
from repinv.models.build import depth
from repinv.objectives import OUTPUT_L2
from repinv.reporting import tables
from repinv.reporting.figures import plt, titled_grid
from repinv.reporting.results import ERROR_FILE, FINISHED, METRICS_FILE, cell_title, target_png

SWEPT_COLUMNS = ("layers",)  # overrides that pick a column, not a row
NOT_SWEPT = (*SWEPT_COLUMNS, *CONTINUATION)  # overrides that name no condition: a column, or how a job was continued
IDENTITY = ["job", "condition", "status", "image", "column"]  # the first table columns; the records' own fields follow
MD_FIELDS = [*IDENTITY, "caption", "error"]
FAILED_CELL = np.full((64, 64, 3), (235, 200, 200), dtype=np.uint8)
NEVER_STARTED = "never started: the launcher failed before it ran this job"


@dataclass
class Job:
    """One multirun job folder as the summary sees it."""

    path: Path
    overrides: list[str]
    records: list[dict] = field(default_factory=list)
    status: str = FINISHED
    error: str = ""
    condition: str = "default"  # the swept overrides other than layers, e.g. "model=resnet50"
    started: bool = True  # False: a job the sweep planned but never ran, whose folder (if any) holds no files of its own

    def override(self, key: str) -> str | None:
        return next((o.partition("=")[2] for o in self.overrides if override_key(o) == key), None)

    def planned(self) -> list[dict]:
        """The records this job wrote, else those its objective planned (one unnamed column if unknown)."""
        own = planned_records(self.path) if self.started else []
        return self.records or own or [{"column": "?"}]

    @property
    def columns(self) -> list[str]:
        """The columns this job was meant to fill."""
        return list(dict.fromkeys(r["column"] for r in self.planned()))


def planned_records(path: Path) -> list[dict]:
    """What a job folder's objective would have written, from the job's config (the run's resolved
    config.yaml if this job wrote it, else Hydra's copy): the class its `objective._target_` names plans the records."""
    configs = (path / "config.yaml", path / ".hydra" / "config.yaml")
    config = next((c for c in configs if c.is_file() and (c.parent != path or _written_by_job(c, path))), None)
    if config is None:
        return []
    try:
        job = OmegaConf.load(config)
        return get_class(job.objective._target_).plan(job.objective, lambda: depth(job))
    except Exception:  # a config that does not resolve or names no objective: the job's cells stay unnamed
        return []


def _job_number(path: Path):
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


SWEEP_ID = "sweep_id.txt"  # in a sweep folder: the id of the sweep that ran last; in a job folder: its sweep's id


def start_sweep(sweep_dir: str | Path) -> None:
    """Give the sweep starting in `sweep_dir` an id: its jobs carry it (`join_sweep`), so its summary reads its own
    jobs, not those an earlier sweep left in the same folder."""
    root = Path(sweep_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / SWEEP_ID).write_text(uuid.uuid4().hex)


def join_sweep(sweep_dir: str | Path, job_dir: str | Path) -> None:
    """Mark `job_dir` as a job of the sweep now running in `sweep_dir`, dropping the error an earlier job there left
    (this job's outcome replaces it). Its results count only if written after this mark (`read_job`); a job of the
    same sweep that starts again (a requeue) keeps the mark it has, so the files it wrote before count too."""
    job = Path(job_dir)
    job.mkdir(parents=True, exist_ok=True)
    (job / ERROR_FILE).unlink(missing_ok=True)
    own = sweep_id(Path(sweep_dir))
    if own is not None and sweep_id(job) != own:  # a requeued job keeps its mark: what it wrote before stays its own
        (job / SWEEP_ID).write_text(own)


def sweep_id(folder: Path) -> str | None:
    """The id of the sweep that ran last in a sweep folder, or that a job folder's job belongs to; None if unmarked."""
    mark = folder / SWEEP_ID
    return mark.read_text().strip() if mark.is_file() else None


def _written_by_job(path: Path, job: Path) -> bool:
    """Whether `path` (a file or folder) was written by the job that last ran in folder `job`, not left by an earlier
    run there."""
    mark = job / SWEEP_ID
    return path.exists() and (not mark.is_file() or path.stat().st_mtime >= mark.stat().st_mtime)


def written_by_jobs(jobs: list[Job], pattern: str) -> list[Path]:
    """What the jobs themselves left in their folders under the glob `pattern`, without what earlier runs there left."""
    return [p for job in jobs if job.started for p in sorted(job.path.glob(pattern)) if _written_by_job(p, job.path)]


def _job_records(metrics: Path) -> list[dict]:
    """The records of a job's metrics.json; ValueError when it is not JSON or not a list of records."""
    records = json.loads(metrics.read_text())
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"it holds {json.dumps(records)[:80]}, not a list of records")
    return [{"column": "?", "caption": "", **r} for r in records]


def read_job(path: Path) -> Job:
    """A job's overrides, records and status: failed when it left an error, no finished metrics of its own, or
    metrics that cannot be read."""
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) or [] if overrides_file.is_file() else []
    job = Job(path, [str(o) for o in overrides])
    metrics, error = path / METRICS_FILE, path / ERROR_FILE
    own = _written_by_job(metrics, path)
    if own:
        try:
            job.records = _job_records(metrics)
        except ValueError as err:
            job.status, job.error = "failed", f"{METRICS_FILE} unreadable: {err}"
        bad = sorted({r.get("status", FINISHED) for r in job.records} - {FINISHED})
        if bad:
            job.status = bad[0]
    if error.is_file():
        text = error.read_text().strip()
        job.status, job.error = "failed", text.splitlines()[0] if text else "failed"
    elif not own:
        job.status, job.error = "failed", "no metrics.json of its own: the job crashed or is still running"
    if job.status != FINISHED and not job.error:
        job.error = f"the run ended with status {job.status}"
    return job


def find_jobs(sweep_dir: str | Path, planned: list[list[str]] | None = None) -> list[Job]:
    """Every job folder of the sweep that ran last in `sweep_dir`: with a sweep id, the folders that carry it, at any
    depth (`hydra.sweep.subdir=runs/${hydra.job.num}`); else those directly inside that Hydra gave a `.hydra/` or
    that hold results. Hidden folders, such as a run's own `.hydra/`, are no jobs. With `planned` (each planned job's
    overrides, in job order), also the planned jobs no folder ran (`never_started`)."""
    root = Path(sweep_dir)
    own = sweep_id(root)
    if own is None:
        marks = (".hydra", METRICS_FILE, ERROR_FILE, "config.yaml")
        folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and any((p / m).exists() for m in marks)]
    else:
        folders = [m.parent for m in root.rglob(SWEEP_ID) if m.parent != root and sweep_id(m.parent) == own
                   and not any(part.startswith(".") for part in m.parent.relative_to(root).parts)]
    jobs = [read_job(p) for p in folders]
    jobs = sorted([*jobs, *never_started(jobs, planned or [], root)], key=lambda j: _job_number(j.path))
    keys = dict.fromkeys(override_key(o) for j in jobs for o in j.overrides)
    swept = [k for k in keys if k not in NOT_SWEPT and len({j.override(k) for j in jobs}) > 1]
    for job in jobs:
        job.condition = ", ".join(f"{k}={job.override(k)}" for k in swept) or "default"
    return jobs


def never_started(jobs: list[Job], planned: list[list[str]], root: Path) -> list[Job]:
    """The planned jobs (each its overrides, in job order) that none of `jobs` ran, marked failed and numbered as the
    launcher would have numbered them."""
    ran = Counter(tuple(j.overrides) for j in jobs)
    out = []
    for num, overrides in enumerate(planned):
        if ran[tuple(overrides)] > 0:
            ran[tuple(overrides)] -= 1
        else:
            out.append(Job(root / str(num), list(overrides), status="failed", error=NEVER_STARTED, started=False))
    return out


def rows(jobs: list[Job], root: Path) -> list[dict]:
    """One table row per (job, record) with every field of the record; a failed job without records
    gets one row per record its objective planned."""
    out = []
    for job in jobs:
        base = {"job": job.path.name, "condition": job.condition, "error": job.error}
        for r in job.planned():
            row = {**base, **r}
            row["status"] = "failed" if job.status == "failed" else r.get("status", job.status)
            if r.get("png"):
                row["png"] = str((job.path / r["png"]).relative_to(root))
            out.append(row)
    return out


def _fmt(value, short: bool = True) -> str:
    """A table cell: numbers to 4 significant digits where `short` (summary.md), else every digit (summary.csv)."""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.4g}" if short else repr(value)
    return "" if value is None else str(value)


def write_tables(table: list[dict], root: Path, n_jobs: int, n_failed: int) -> tuple[Path, Path]:
    csv_path, md_path = root / "summary.csv", root / "summary.md"
    tables.write_csv(csv_path, [{k: _fmt(v, short=False) for k, v in row.items()} for row in table],
                     tables.columns(table, IDENTITY))
    lines = [f"# Sweep {root.name}", "", f"{n_jobs} jobs, {n_failed} failed.", "",
             *tables.md_table([{c: _fmt(row.get(c)) for c in MD_FIELDS} for row in table], MD_FIELDS)]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _png(path: Path):
    return np.asarray(Image.open(path).convert("RGB")) if path.is_file() else None


def write_grid(jobs: list[Job], table: list[dict], root: Path) -> Path:
    """Rows: (condition, image); columns: the target, then every column of the sweep in order."""
    columns = list(dict.fromkeys(row["column"] for row in table))
    grid: dict[tuple[str, str], dict] = {}
    for job in sorted(jobs, key=lambda j: not j.records):  # jobs without records join their condition's rows
        images = list(dict.fromkeys(r.get("image") for r in job.records))
        if not images:
            keys = [k for k in grid if k[0] == job.condition] or [(job.condition, None)]
            for key, c in ((key, c) for key in keys for c in job.columns):
                grid.setdefault(key, {}).setdefault(c, (FAILED_CELL, cell_title(c, job.status)))
        for image in images:
            cells = grid.setdefault((job.condition, image), {})
            if "target" not in cells:
                cells["target"] = (_png(target_png(job.path, image)), "target")
            for r in job.records:
                if r.get("image") != image:
                    continue
                ok = job.status == FINISHED
                if not ok and r["column"] in cells:  # another job of the condition filled it (layers=[0,1],[1,2])
                    continue
                img = _png(job.path / r["png"]) if ok and r.get("png") else FAILED_CELL
                cells[r["column"]] = (img, cell_title(r["column"], r["caption"] if ok else job.status))
    fig_rows, labels = [], []
    for (condition, image), cells in grid.items():
        fig_rows.append([cells.get(c, (None, "")) for c in ["target", *columns]])
        labels.append(f"{condition}\n{image}" if image else condition)
    return titled_grid(fig_rows, root / "summary.png", row_labels=labels, suptitle=f"sweep {root.name}")


def write_metric_plot(table: list[dict], root: Path) -> Path:
    """Each compared metric against column, one line per (condition, image), from the finished rows that hold them."""
    columns = list(dict.fromkeys(row["column"] for row in table))
    fig, axes = plt.subplots(1, len(COMPARED), figsize=(max(6, 1.2 * len(columns)) * len(COMPARED), 4), squeeze=False)
    lines: dict[str, dict[str, dict]] = {}
    for row in table:
        if row.get("status") == FINISHED:
            name = row["condition"] + (f" / {row['image']}" if row.get("image") else "")
            lines.setdefault(name, {})[row["column"]] = row
    drawn = False
    for ax, metric in zip(axes[0], COMPARED):
        for name, points in lines.items():
            xs = [c for c, row in points.items() if isinstance(row.get(metric), (int, float))]
            if xs:
                ax.plot([columns.index(c) for c in xs], [points[c][metric] for c in xs], marker="o", label=name)
                drawn = True
        ax.set_xticks(range(len(columns)), columns, rotation=30, fontsize=8)
        ax.set_xlabel("column")
        ax.set_ylabel(axis_label(metric))
        ax.grid(alpha=0.3)
    if drawn:
        axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = root / "summary_metrics.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summarize(sweep_dir: str | Path, planned: list[list[str]] | None = None) -> dict:
    """Write the summary files of a sweep folder (with `planned`, also the planned jobs that never started); returns
    their paths and the failed jobs."""
    root = Path(sweep_dir)
    jobs = find_jobs(root, planned)
    if not jobs:
        raise FileNotFoundError(f"{root} holds no job folders (expected 0/, 1/, ... from `repinv -m`)")
    table = rows(jobs, root)
    failed = [j for j in jobs if j.status != FINISHED]
    csv_path, md_path = write_tables(table, root, len(jobs), len(failed))
    return {"grid": write_grid(jobs, table, root), "plot": write_metric_plot(table, root), "csv": csv_path,
            "md": md_path, "jobs": jobs, "failed": failed}


def score(records: list[dict], metric: str = OUTPUT_L2) -> float:
    """The number a sweeper optimises: the mean of `metric` over a run's records (a flag counts 1 when true, so the
    mean of `accurate` is the fraction judged accurate; NaN if none)."""
    values = [float(r[metric]) for r in records if isinstance(r.get(metric), (int, float))]
    values = [v for v in values if math.isfinite(v)]
    return float(sum(values) / len(values)) if values else float("nan")


def single_run(folder: Path) -> bool:
    """Whether `folder` is the folder of one run (it holds its metrics.json or Hydra's `.hydra/`), not of a multirun."""
    return (folder / METRICS_FILE).is_file() or (folder / ".hydra").is_dir()


def main(argv: list[str] | None = None) -> int:
    """`repinv-summary SWEEP_DIR`: exit 1 when a job failed, 2 when the folder holds no jobs or is a single run."""
    parser = argparse.ArgumentParser(prog="repinv-summary", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a multirun folder, e.g. logs/multiruns/2025-01-01_12-00-00")
    args = parser.parse_args(argv)
    root = Path(args.sweep_dir)
    if single_run(root):
        print(paragraph("repinv-summary", f"{root} is a single run, not a multirun's folder; its results are in "
                        f"{root / METRICS_FILE} and the images beside it. Give the folder of a multirun, which holds "
                        "one folder per job (e.g. logs/multiruns/<date>_<time>)."), file=sys.stderr)
        return 2
    try:
        out = summarize(root)
    except (FileNotFoundError, NotADirectoryError) as err:
        print(f"repinv-summary: error: {err}; give the folder of a multirun (e.g. logs/multiruns/<date>_<time>)",
              file=sys.stderr)
        return 2
    print(report(out))
    return 1 if out["failed"] else 0


def report(out: dict) -> str:
    """What a person reads at the end of a sweep: the files and the failed jobs."""
    lines = [f"sweep summary: {out['grid']} {out['plot'].name} {out['csv'].name} {out['md'].name}"]
    lines += [f"  job {j.path.name} ({j.condition}) {j.status}: {j.error}" for j in out["failed"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
