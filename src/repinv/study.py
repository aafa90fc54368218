"""The study runner: a condition (repinv overrides) -> its run folder -> its records.

Every tool that needs inversions (the claims ledger, the figure scripts, the recipe study, the
diagnostics) asks this runner for them, so the same inversion is never made twice. A run's folder
is named by its overrides in canonical form (the last value of each key, keys sorted): a run made
for one tool is found by every other tool that asks for the same overrides under the same root.
A folder whose run finished with those overrides is reused; one that holds a checkpoint of an
unfinished run resumes from it (`resume=last`); a run executes in this process (`repinv.run`) or
as its own `python -m repinv` process, and the folder is the same either way.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import traceback
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from repinv.errors import RepinvError
from repinv.naming import slug
from repinv.reporting.callbacks import last_checkpoint
from repinv.reporting.results import FINISHED, all_finished, read_records

COMMAND = "command.txt"  # the canonical overrides of a finished run, one per line
RUNS = "runs"  # the folder of a study's run folders under its root
FOLDER = {"sep": "_", "keep": ".-"}  # how `slug` spells a part of a run's folder name: other characters become one `_`


def quote(value) -> str:
    """A value quoted for Hydra's override parser (spaces, commas, `=` and quotes survive)."""
    return "'" + str(value).replace("'", "\\'") + "'"


def image_override(images: Sequence[str]) -> str:
    """`image=[...]` with each name or path quoted, so paths with spaces or commas survive Hydra's parser."""
    return f"image=[{','.join(map(quote, images))}]"


def count_arg(unit: str, example: int):
    """An argparse type for a number of `unit` (steps, seeds): a whole number of at least 1, where 0 would read as the
    default or make nothing to measure."""
    def check(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text} is not a number of {unit}: give a whole number of at least 1, "
                                             f"e.g. {example}")
        return int(text)
    return check


steps_arg = count_arg("steps", 300)  # the study tools' --steps


def check_out(out: Path | None, holds: str) -> None:
    """`--out` is a folder or can become one: a file there, or at a folder above it, would stop it from being made
    after the arguments were accepted. `holds` says what the folder is for."""
    blocked = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None) if out else None
    if blocked is not None:
        where = "" if blocked == out else f" is inside {blocked}, which"
        raise RepinvError(f"--out {out}{where} is a file; {holds}. Give a new or existing folder.")


def key(override: str) -> str:
    """The config key an override sets: `+k=v`, `++k=v` and `k=v` all set k."""
    return str(override).partition("=")[0].lstrip("+~")


def canonical(overrides: Iterable[str]) -> tuple[str, ...]:
    """The overrides as Hydra applies them: the last value of each key wins; sorted by key."""
    last: dict[str, str] = {}
    for o in overrides:
        last[key(o)] = str(o)
    return tuple(last[k] for k in sorted(last))


def value(overrides: Sequence[str], name: str) -> str | None:
    """The value `overrides` give the key `name` (the last one), or None."""
    return next((o.partition("=")[2] for o in reversed(overrides) if key(o) == name), None)


def label(overrides: Sequence[str]) -> str:
    """`<model>[-<surgery>]`: the network a run inverts, as the tables and folder names show it."""
    return "-".join(slug(p, **FOLDER) for p in [value(overrides, "model") or "model", value(overrides, "surgery")] if p)


def folder_name(overrides: Sequence[str]) -> str:
    """`<model>[-<surgery>]-seed<k>-<hash of the canonical overrides>`: readable, and unique per condition."""
    digest = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:10]
    return f"{label(overrides)}-seed{slug(value(overrides, 'seed') or '0', **FOLDER)}-{digest}"


@dataclass
class Run:
    """One repinv run of the study: its canonical overrides, its folder and, once made, its records."""

    overrides: tuple[str, ...]
    folder: Path
    status: str = "pending"
    records: list[dict] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.folder.parent / f"{self.folder.name}.log"

    @property
    def finished(self) -> bool:
        """Whether the folder holds this run, finished: its command matches and its metrics.json exists."""
        done = self.folder / COMMAND
        return done.is_file() and done.read_text() == "\n".join(self.overrides) and all_finished(self.folder)

    @property
    def ok(self) -> bool:
        """Whether this run was made (or found) finished, its records read."""
        return self.status == FINISHED


def run_for(root: Path, overrides: Iterable[str]) -> Run:
    """The run of these overrides under `root` (`<root>/runs/<folder_name>`)."""
    o = canonical(overrides)
    return Run(o, Path(root) / RUNS / folder_name(o))


def recorded(root: Path) -> list[tuple[str, ...]]:
    """The canonical overrides of every run under `root` that finished (its folder's COMMAND file)."""
    return [tuple(p.read_text().splitlines()) for p in sorted(Path(root).glob(f"{RUNS}/*/{COMMAND}"))]


def launch(args: list[str], log: Path, in_process: bool) -> str | None:
    """Run `repinv ARGS`, its output to `log`: in this process, or as its own process. Why it failed, or None."""
    import repinv

    with open(log, "a") as f:
        if not in_process:
            code = subprocess.run([sys.executable, "-m", "repinv", *args], stdout=f, stderr=subprocess.STDOUT,
                                  env=os.environ.copy()).returncode
            return f"exit {code}; see {log}" if code else None
        try:
            with redirect_stdout(f), redirect_stderr(f):
                repinv.run(args)
        except Exception as err:  # one run's failure is that run's status, not the study's end
            traceback.print_exc(file=f)
            return f"{type(err).__name__}: {' '.join(str(err).split())}; see {log}"
    return None


NOT_MADE = "not made yet"


def make(run: Run, in_process: bool = True, launch_missing: bool = True) -> Run:
    """Make (resume, or reuse) one run and read its records; with `launch_missing=False` only read a finished one."""
    if not run.finished and not launch_missing:
        run.status = NOT_MADE
        return run
    if not run.finished:
        # a run that finished but was stopped before its command was written needs no launch (its folder's name
        # is its overrides' digest): resuming a finished run is refused
        if not all_finished(run.folder):
            run.folder.parent.mkdir(parents=True, exist_ok=True)
            resume = ["resume=last"] if last_checkpoint(run.folder).is_file() else []
            failure = launch([*run.overrides, *resume, f"hydra.run.dir={quote(run.folder)}"], run.log, in_process)
            if failure or not all_finished(run.folder):
                run.status = failure or f"the run did not finish (metrics.json missing or unfinished); see {run.log}"
                return run
        (run.folder / COMMAND).write_text("\n".join(run.overrides))
    run.records = read_records(run.folder)
    run.status = FINISHED
    return run


def expect_trained(run: Run) -> Run:
    """A finished run that was given trained weights but whose records say its network holds none failed: the weights
    did not load. A transplant's network is untrained with trained parts (`trained_parts`, absent in older records)."""
    if run.ok and not all(r.get("trained_parts", r.get("trained")) for r in run.records):
        run.status = f"weights were given but metrics.json says no part of the network is trained: {run.folder}"
    return run


def execute(runs: Iterable[Run], jobs: int = 1, launch_missing: bool = True) -> list[Run]:
    """Make every run: one after another in this process (in its main thread, so Ctrl+C or SIGTERM stops a run at a
    step boundary with its checkpoint, and the study with it), or `jobs` at once, each its own process.

    `launch_missing=False` reads the finished runs and launches nothing (a report of what is done so far).
    """
    made, one = [], partial(make, launch_missing=launch_missing)
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        try:
            for run in pool.map(partial(one, in_process=False), runs) if jobs > 1 else map(one, runs):
                made_yet = run.status in (FINISHED, NOT_MADE)
                print(f"{run.status}: {run.folder}" if made_yet else f"run failed: {run.status}", file=sys.stderr)
                made.append(run)
        except BaseException:
            pool.shutdown(cancel_futures=True)  # an interrupted study starts no further run
            raise
    return made
