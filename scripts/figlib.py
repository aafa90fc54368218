"""Shared driver for the figure scripts: run each panel through the `repinv` CLI, then assemble.

Every panel is one `repinv` run made by the study runner (`repinv.study`) under `--out`
(`<out>/runs/<model>-seed<k>-<hash>/`): a finished run with the same overrides, made by any tool
under the same folder, is reused; `--jobs N` runs N panels at once, each its own process. The figure is a grid with one row per
panel and the target first, then each reconstruction titled with its record's column and caption (its
objective's headline number), or the run's filter grid (filters.png); its numbers go to a CSV beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from repinv import study
from repinv.claims.cli import check_checkpoints, check_images, check_runs
from repinv.claims.ledger import refuse_planned
from repinv.errors import RepinvError, paragraph
from repinv.inputs.images import resolved
from repinv.reporting.callbacks import FILTERS, read_filters
from repinv.reporting.figures import titled_grid
from repinv.reporting.results import FINISHED, cell_title, read_records, target_png
from repinv.reporting.tables import columns, write_csv
from repinv.sources import Weights, model_config
from repinv.study import Run

REPO = Path(__file__).resolve().parents[1]
IDENTITY = ["panel", "status", "weights", "image", "column"]  # the first CSV columns; the records' own fields follow


@dataclass
class Panel:
    """One row of a figure: a label, the CLI overrides for it, and what changes in --smoke mode.

    `show` is what the row holds: the run's target and reconstructions, or (`filters`) the
    model's first filters on the image that every run draws as filters.png.
    """

    label: str
    overrides: list[str]
    smoke: list[str] = field(default_factory=list)
    trained: bool = False
    show: str = "reconstructions"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny untrained models and a few steps (what the tests run)")
    p.add_argument("--out", type=Path, default=REPO / "logs" / "figures", help="where the figure and its runs go")
    p.add_argument("--checkpoint", help="trained weights file for the trained panels (model.checkpoint=...)")
    p.add_argument("--pretrained", action="store_true", help="trained panels load timm's pretrained weights (hub or cache)")
    p.add_argument("--image", action="append", help="photograph to invert (repeatable; a row each), e.g. a path to "
                   "the study's dalmatian")
    p.add_argument("--steps", type=study.steps_arg, help="override the figure's number of steps")
    p.add_argument(
        "--source",
        choices=["timm", "torchvision"],
        default="timm",
        help="model library: torchvision runs the study's own models (tv_* configs)",
    )
    p.add_argument("--jobs", type=int, default=1, help="panels run at once (each its own repinv process)")
    p.add_argument("overrides", nargs="*", help="extra repinv overrides applied to every panel, e.g. model.source=torchvision")
    return p


SMOKE = ["steps=3", "log_every=1", "logger=none"]
NO_WEIGHTS = "none given"


def weights(panel: Panel, args) -> tuple[str, list[str]]:
    """What a panel's weights are (the CSV's `weights`) and the overrides that load them.

    A trained panel without --pretrained or --checkpoint (or in --smoke mode) runs untrained
    weights: it says so (`none given`) rather than passing for trained. A --checkpoint is named by its absolute path, so
    that the run names the file it loads wherever the script is run from.
    """
    if not panel.trained:
        return "untrained", []
    files = [str(Path(args.checkpoint).expanduser().resolve())] if args.checkpoint else []
    given = Weights() if args.smoke else Weights.parse(files, args.pretrained)
    return given.choose(args.source, panel_overrides(panel, args)) or (NO_WEIGHTS, [])


def panel_overrides(panel: Panel, args) -> list[str]:
    """The panel's own overrides (smoke settings included), its models mapped to --source."""
    return [model_config(o, args.source) for o in [*panel.overrides, *(panel.smoke + SMOKE if args.smoke else [])]]


def panel_settings(panel: Panel, experiment: str, args) -> list[str]:
    """What the figure sets in a panel's run: its experiment, its overrides, its weights, --image (a file by its absolute
    path, as `resolved` names it) and --steps."""
    picked = [study.image_override(resolved(args.image))] if args.image else []
    picked += [f"steps={args.steps}"] if args.steps else []
    return [f"experiment={experiment}", *panel_overrides(panel, args), *weights(panel, args)[1], *picked]


def panel_run(panel: Panel, experiment: str, args) -> Run:
    """The study run of one panel: what the figure sets in it and the extra overrides, under --out."""
    return study.run_for(args.out / ("smoke" if args.smoke else ""), [*panel_settings(panel, experiment, args), *args.overrides])


# The flags that set what a panel's run holds; an extra override of the same key is refused, naming the flag.
FLAGS = {"image": "--image", "steps": "--steps", "model.checkpoint": "--checkpoint", "model.pretrained": "--pretrained",
         "model.weights": "--pretrained"}


def without_photograph(panel: Panel) -> str | None:
    """What a panel's row shows where it inverts no photograph (so --image changes nothing in it); None where it does."""
    if panel.show == "filters":
        return "the model's input filters"
    return "images generated for classes" if study.value(panel.overrides, "classes") is not None else None


def check(panels: list[Panel], experiment: str, args) -> None:
    """Before any run: no extra override replaces what a panel sets, --image is given only to a figure that inverts it,
    --image and --checkpoint name files (or embedded photographs), and every panel's overrides compose with repinv's
    config and hold values a run can start with (not seed=x)."""
    study.check_out(args.out, "the figure and its runs go in a folder")
    shown = {without_photograph(panel) for panel in panels}
    if args.image and None not in shown:
        raise RepinvError(f"--image {' '.join(args.image)}: this figure's rows show {' and '.join(sorted(shown))}, not an "
                          "inverted photograph, so --image would change nothing it draws; leave it out.")
    settings = [panel_settings(panel, experiment, args) for panel in panels]
    refuse_planned(args.overrides, {study.key(o) for s in settings for o in s} | set(FLAGS), FLAGS, "the figure", "per panel")
    check_images(args.image or [])
    check_checkpoints([args.checkpoint] if args.checkpoint else [])
    check_runs([panel_run(panel, experiment, args) for panel in panels], args.overrides, "the figure", (),
               "precision=bf16 trainer.accelerator=gpu")


def ran_label(panel: Panel, run: Run) -> str:
    """The panel's label, saying how many steps ran where --steps or --smoke replaced the panel's own `steps=` (its
    label names that setting, which then did not run)."""
    own, ran = study.value(panel.overrides, "steps"), study.value(run.overrides, "steps")
    return panel.label if own in (None, ran) else f"{panel.label} (ran {ran} steps)"


def _reconstruction_rows(panel: Panel, status: str, run_dir: Path, records: list[dict]) -> tuple[list, list[dict]]:
    """A row per target image, named by it where the run has several: the target, then each of its reconstructions
    titled with its column and caption; one CSV row per record."""
    images = list(dict.fromkeys(r.get("image") for r in records))
    rows = []
    for image in images:
        target = target_png(run_dir, image) if image else None
        cells = [(Image.open(target).convert("RGB"), "target")] if target is not None and target.is_file() else []
        cells += [(Image.open(run_dir / r["png"]).convert("RGB"), cell_title(r["column"], r["caption"]))
                  for r in records if r.get("image") == image]
        rows.append((image if len(images) > 1 else "", cells))
    return rows, [{"panel": panel.label, "status": status, **r} for r in records]


def _filter_rows(panel: Panel, status: str, run_dir: Path, records: list[dict]) -> tuple[list, list[dict]]:
    """The run's filters.png (the model's first filters on the image) and one CSV row of their numbers."""
    stats = read_filters(run_dir) if records else None
    if stats is None:
        return [], []
    title = f"{stats['module']} · {stats['filters']} filters · {stats['structured']:.0%} structured"
    return (
        [("", [(Image.open(run_dir / f"{FILTERS}.png").convert("RGB"), title)])],
        [{"panel": panel.label, "status": status, "steps": records[0].get("steps"), "column": stats["module"], **stats}],
    )


def assemble(
    name: str, title: str, panels: list[Panel], results: dict[str, tuple[str, Path, str]], out: Path
) -> tuple[Path, Path]:
    """Grid PNG (rows = panels) and CSV of every panel's numbers and weights."""
    rows, labels, table = [], [], []
    for panel in panels:
        status, run_dir, loaded = results[panel.label]
        records = read_records(run_dir) if status == FINISHED else []
        drawn, panel_rows = (_filter_rows if panel.show == "filters" else _reconstruction_rows)(panel, status, run_dir, records)
        if not panel_rows:
            status = "failed"
            panel_rows, drawn = [{"panel": panel.label, "status": status}], [("", [(None, "")])]
        table += [{**r, "weights": loaded} for r in panel_rows]
        label = f"{panel.label} (no trained weights given)" if loaded == NO_WEIGHTS else panel.label
        label = label if status == FINISHED else f"{label} (failed)"
        for image, row in drawn:
            rows.append(row)
            labels.append(f"{label} · {image}" if image else label)
    import numpy as np

    rows = [[(np.asarray(img) if img is not None else None, t) for img, t in row] for row in rows]
    cell = 4.4 if all(p.show == "filters" for p in panels) else 2.2  # a filter grid holds many small pictures
    png = titled_grid(rows, out / f"{name}.png", row_labels=labels, suptitle=title, cell=cell)
    csv_path = out / f"{name}.csv"
    return png, write_csv(csv_path, table, columns(table, IDENTITY))


def run_panels(panels: list[Panel], experiment: str, args) -> list[Run]:
    """Each panel's run, made by the study runner (a finished one reused); a trained panel's run must say trained."""
    runs = [panel_run(panel, experiment, args) for panel in panels]
    unique = {run.overrides: run for run in runs}
    study.execute(unique.values(), args.jobs)
    for panel, run in zip(panels, runs):
        run = unique[run.overrides]
        if weights(panel, args)[1]:
            study.expect_trained(run)
        if not run.ok:
            print(f"panel '{panel.label}' failed: {run.status}", file=sys.stderr)
    return [unique[run.overrides] for run in runs]


def main(name: str, title: str, experiment: str, panels: list[Panel], argv=None) -> int:
    """Parse and check the script's arguments (exit 2 before any run when `check` finds one wrong), run every panel,
    write `<out>/<name>.png` and `.csv`, print the paths; exit 1 when a panel failed."""
    p = parser(title)
    args = p.parse_args(argv)
    out = args.out / ("smoke" if args.smoke else "")
    started = time.perf_counter()
    try:
        check(panels, experiment, args)
    except RepinvError as err:
        print(paragraph(p.prog, err), file=sys.stderr)
        return 2
    runs = run_panels(panels, experiment, args)
    panels = [replace(panel, label=ran_label(panel, run)) for panel, run in zip(panels, runs)]
    results = {panel.label: (run.status, run.folder, weights(panel, args)[0]) for panel, run in zip(panels, runs)}
    png, csv_path = assemble(name, title, panels, results, out)
    print(png)
    print(csv_path)
    print(f"{name}: {len(panels)} panels in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0 if all(s == FINISHED for s, _, _ in results.values()) else 1
