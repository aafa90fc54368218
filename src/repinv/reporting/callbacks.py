"""Lightning callbacks: image timelines for the loggers, the model's input filters and the run's result files."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Protocol

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from repinv.engine.identity import CHANGES_KEY
from repinv.engine.runinfo import RunInfo
from repinv.engine.sharding import CollectiveFailed, any_rank, shard_bounds
from repinv.engine.validation import check_steps
from repinv.errors import RepinvError
from repinv.models import LoadedModel
from repinv.objectives import target_key
from repinv.reporting.figures import filter_grid, filter_stats, input_conv, to_uint8
from repinv.reporting.results import FINISHED, INTERRUPTED, PROCESS, merge_shares, share_file, write_results, write_share

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.ckpt"
CHECKPOINT_DIR = "checkpoints"  # under a run folder (conf/callbacks/default.yaml's `checkpoints.dirpath`)


def last_checkpoint(run_folder: str | Path) -> Path:
    """Where a run folder's latest checkpoint is (`resume=last` continues from it)."""
    return Path(run_folder) / CHECKPOINT_DIR / LAST_CHECKPOINT


class RunView(Protocol):
    """What a callback may read of the run (`ImageOptimization` provides it): nothing else of the module."""

    steps: int  # the run's step count
    targets: list[dict]  # every target's identity, in target order (all processes)
    net: nn.Module  # the frozen network
    model_info: LoadedModel
    logged_loss: float | None  # the summed loss of the last log step

    def reference_images(self) -> dict[str, torch.Tensor]: ...

    def final_metrics(self, gathered: bool = True) -> list[dict]: ...

    def images(self, gathered: bool = True) -> torch.Tensor: ...


def _image_loggers(trainer: pl.Trainer):
    return [lg for lg in trainer.loggers if hasattr(lg, "log_image")]


class ImageTimeline(pl.Callback):
    """Every `every` steps (0: at the last step alone), log the reconstructions to each logger that takes images (W&B)."""

    def __init__(self, every: int = 100):
        check_steps("callbacks.image_timeline.every", every, "image_every sets it, e.g. image_every=100.",
                    zero="the final images alone")
        self.every = int(every)

    @rank_zero_only
    def on_train_start(self, trainer, pl_module: RunView):
        refs = pl_module.reference_images()
        if not refs or trainer.global_step:
            return
        for lg in _image_loggers(trainer):
            lg.log_image(key="target", images=[to_uint8(x) for x in refs.values()], step=0, caption=list(refs))

    def on_train_batch_end(self, trainer, pl_module: RunView, outputs, batch, batch_idx):
        step = trainer.global_step
        if (not self.every or step % self.every) and step != pl_module.steps:
            return
        imgs = pl_module.images()  # every rank takes part; only rank 0's loggers write
        if not trainer.is_global_zero:
            return
        imgs = [to_uint8(x) for x in imgs]
        captions = [target_key(t) for t in pl_module.targets]
        for lg in _image_loggers(trainer):
            lg.log_image(key="reconstruction", images=imgs, step=step, caption=captions)


FILTERS = "filters"  # FilterGrid's default key: <run folder>/filters.png and filters.json


def read_filters(folder: str | Path, key: str = FILTERS) -> dict | None:
    """The numbers FilterGrid wrote for a run's input filters (`module` and `figures.filter_stats`), or None."""
    path = Path(folder) / f"{key}.json"
    return json.loads(path.read_text()) if path.is_file() else None


class FilterGrid(pl.Callback):
    """At train start, the model's first filters on the image as `filters.png` (and their numbers
    as `filters.json`) in the run folder, also logged as image `filters`. Models without a
    3-channel first convolution are skipped. A resumed run writes the files where its folder lacks
    them (a resume into a new folder) and logs nothing: its logger has them from step 0."""

    def __init__(self, out_dir: str | Path, key: str = FILTERS):
        self.out_dir, self.key = Path(out_dir), key

    @rank_zero_only
    def on_train_start(self, trainer, pl_module: RunView):
        found = input_conv(pl_module.net)
        numbers = self.out_dir / f"{self.key}.json"
        if found is None or (trainer.global_step and numbers.exists()):
            return
        module, conv = found
        filters = conv.weight.detach().float().cpu()
        path = filter_grid(filters, self.out_dir / f"{self.key}.png")
        numbers.write_text(json.dumps({"module": module, **filter_stats(filters)}, indent=1))
        if trainer.global_step:
            return
        caption = f"{module}: {filters.shape[0]} filters {filters.shape[-2]}x{filters.shape[-1]}"
        for lg in _image_loggers(trainer):
            lg.log_image(key=self.key, images=[str(path)], step=0, caption=[caption])


class ResultWriter(pl.Callback):
    """Writes PNGs, the grid and metrics.json at the end of fit, and also when a run is interrupted.

    With several processes an interrupted run (a signal: every rank stops at the same step) is
    gathered as a finished one is. After a crash the ranks may not reach each other: each rank
    that can writes its share (PNGs, `metrics.rank<k>.json`: status `crashed` on the rank that
    raised, `aborted` on a rank whose collective failed because another rank was gone), then writes
    metrics.json anew from the share files there are, the other targets as `status: missing`.
    """

    NUMBERS = ("steps", "seconds_per_step")  # the numeric fields it adds to each target's record

    def __init__(self, out_dir: str | Path, run: RunInfo | None = None):
        self.out_dir = Path(out_dir)
        self.title = run.name if run else None
        # fields every record carries: a resumed run's changes against its checkpoint
        self.extra = {CHANGES_KEY: run.changes} if run and run.changes else {}
        self.records: list[dict] = []
        self.images: torch.Tensor | None = None
        self.resumed = bool(run and run.resume_step)
        self._t0: float | None = None
        self._step0 = 0
        self._written = False
        self._started = False

    def on_train_start(self, trainer, pl_module: RunView):
        self._t0, self._step0, self._written, self._started = None, trainer.global_step, False, True
        (self.out_dir / share_file(trainer.global_rank)).unlink(missing_ok=True)  # from an earlier crash

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def seconds_per_step(self, trainer) -> float | None:
        done = trainer.global_step - self._step0
        if self._t0 is None or done <= 0:
            return None
        return (time.perf_counter() - self._t0) / done

    def _fields(self, trainer, pl_module, status: str) -> dict:
        return {"steps": trainer.global_step, "seconds_per_step": self.seconds_per_step(trainer), "status": status,
                "model": pl_module.model_info.label, "trained": pl_module.model_info.trained,
                "trained_parts": pl_module.model_info.trained_parts, **self.extra}

    def write(self, trainer, pl_module, status: str) -> None:
        """Gather every rank's targets (collective), then rank 0 writes the files."""
        extra = self._fields(trainer, pl_module, status)
        records = [{**r, **extra} for r in pl_module.final_metrics()]
        images = pl_module.images()
        if not trainer.is_global_zero:
            return
        refs = {name: ref.cpu() for name, ref in pl_module.reference_images().items()}
        self.images = images.cpu()
        self.records = write_results(self.out_dir, records, self.images, refs, self.title)
        log.info("results written to %s", self.out_dir)

    def on_train_end(self, trainer, pl_module: RunView):
        self.finish(trainer, pl_module)

    def finish(self, trainer, pl_module: RunView) -> list[dict]:
        """The records of this fit, written at the first call after it ended (collective): whichever
        callback asks first at the end of fit, the files are written once."""
        if not self._written:
            self.write(trainer, pl_module, FINISHED if trainer.global_step >= pl_module.steps else INTERRUPTED)
            self._written = True
        return self.records

    def write_share(self, trainer, pl_module, status: str) -> None:
        """After a crash with several processes: this rank's share, then metrics.json from every share on disk (every
        rank merges: whichever crashed, the last to write its share leaves them all in metrics.json).
        A crash before the targets were shared out (a process that never joined) leaves every target in each process:
        each writes its own share's rows, so no target is written twice."""
        total, world = len(pl_module.targets), trainer.world_size
        start, stop = shard_bounds(total, trainer.global_rank, world)
        extra = {**self._fields(trainer, pl_module, status), PROCESS: trainer.global_rank}
        records = [{**r, **extra} for r in pl_module.final_metrics(gathered=False)]
        images = pl_module.images(gathered=False).cpu()
        if len(records) == total > stop - start:
            records, images = records[start:stop], images[start:stop]
        write_share(self.out_dir, records, images, trainer.global_rank)
        shares = [pl_module.targets[slice(*shard_bounds(total, r, world))] for r in range(world)]
        self.records = merge_shares(self.out_dir, shares)
        log.warning("run %s: this process's share written to %s", status, self.out_dir / share_file(trainer.global_rank))

    def on_exception(self, trainer, pl_module, exception):
        """The results as far as the run got; results already written at the end of fit (a later hook failed, such as
        the final checkpoint) are kept as they are."""
        if self._written or (self.resumed and not self._started):
            log.error("the run failed %s (%s: %s); the results there are kept as they are",
                      "after its results were written" if self._written else "before its checkpoint's state was restored",
                      type(exception).__name__, exception)
            return
        stopped = FINISHED if trainer.global_step >= pl_module.steps else INTERRUPTED  # a second signal stops at once
        status = (stopped if isinstance(exception, (KeyboardInterrupt, SIGTERMException))
                  else "aborted" if isinstance(exception, (CollectiveFailed, dist.DistError)) else "crashed")
        try:
            if trainer.world_size == 1:
                self.write(trainer, pl_module, status)
            else:
                self.write_share(trainer, pl_module, status)
        except Exception:  # the original exception matters more than a failed write
            log.exception("could not write results after the run was %s", status)


def _unwritable(folder: Path) -> str | None:
    """Why `folder` could not be created or written in, or None; judged by it or its nearest ancestor that exists,
    so nothing is created."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    return None if os.access(existing, os.W_OK | os.X_OK) else f"{existing} is not writable"


class Checkpoints(pl.Callback):
    """Lightning checkpoints of the run as `<dirpath>/last.ckpt`, written atomically.

    Saved every `every` steps (0: never), at the end of a run when `every` > 0, always at the end
    of an interrupted run, so `resume=` can continue it, and at the end of a run that left one
    before (a resumed one), so the folder never holds a checkpoint older than its results. Lightning's own atomic save goes
    through a temporary file in /tmp and a move, which is a copy across filesystems; here the
    file is written beside its destination and renamed. With several processes every rank takes
    part (each contributes its rows, see `ImageOptimization.on_save_checkpoint`) and rank 0 writes
    one checkpoint of the whole batch, which resumes on any number of processes.
    """

    def __init__(self, dirpath: str | Path, every: int):
        """A `dirpath` that cannot be created or written is refused now, not after the run's last step."""
        check_steps("callbacks.checkpoints.every", every, "checkpoint_every sets it, e.g. checkpoint_every=500.",
                    zero="no periodic checkpoints")
        self.dirpath, self.every = Path(dirpath), int(every)
        self.last = self.dirpath / LAST_CHECKPOINT
        why = _unwritable(self.dirpath)
        if why:
            raise RepinvError(f"callbacks.checkpoints.dirpath={self.dirpath} cannot be created or written ({why}). Give "
                              f"the checkpoints a folder that can be: the default is the run folder's {CHECKPOINT_DIR}/, "
                              "or callbacks.checkpoints.dirpath=<folder>; callbacks.checkpoints=null saves none.")

    def save(self, trainer) -> None:
        """Flush the loggers, then write the checkpoint: whatever a checkpoint holds, the logs on disk hold too."""
        for logger in trainer.loggers:
            logger.save()
        self.dirpath.mkdir(parents=True, exist_ok=True)
        tmp = self.last.with_name(self.last.name + ".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # the whole state: optimiser, schedule, loops (collective)
        if not trainer.is_global_zero:
            return
        os.replace(tmp, self.last)
        log.info("checkpoint at step %d: %s", trainer.global_step, self.last)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every and step % self.every == 0 and step < pl_module.steps:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module):
        if self.every or trainer.global_step < pl_module.steps or self.last.is_file():
            self.save(trainer)


class StopOnSignal(pl.Callback):
    """SIGINT, SIGTERM (and a requeue signal someone already handles) end the run at the next step boundary.

    The step in progress finishes and fit ends as usual, so the results are written (status
    `interrupted`) and `Checkpoints` saves the run. `exit()` then hands the signal on: to the
    handler that was there before the run (submitit's requeue on SIGUSR2), otherwise the process
    ends with 128 + the signal number. Lightning's own SIGTERM handler would raise mid-loop and
    exit 0; it is replaced while the run trains. A second signal stops at once.

    With several processes every rank installs the handlers and the ranks agree after each step
    (`any_rank`), so a signal to any one of them stops all at the same step boundary.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    HANDED_ON = (signal.SIGUSR1, signal.SIGUSR2)  # caught only when a handler is already installed

    def __init__(self):
        self.signum: int | None = None
        self.received = False  # whether this process got the signal itself (not only heard of it from another rank)
        self.stopped_at: int | None = None
        self.previous: dict = {}

    def setup(self, trainer, pl_module, stage):
        """Record the handlers from before the run and put this one in their place: from here on (a resumed run's
        state and the module's own start are still to come) a signal stops the run at a step boundary."""
        if threading.current_thread() is not threading.main_thread():
            return
        handlers = {s: signal.getsignal(s) for s in (*self.SIGNALS, *self.HANDED_ON)}
        self.previous = {s: h for s, h in handlers.items() if s in self.SIGNALS or callable(h)}
        self._install()

    def on_train_start(self, trainer, pl_module):
        self._install()  # over Lightning's own SIGTERM handler, which it registers after setup

    def _install(self) -> None:
        for signum in self.previous:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.signum, self.received = signum, True
        name = signal.Signals(signum).name
        log.warning("received %s: stopping after this step (send it again to stop at once)", name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.stopped_at is not None or trainer.global_step >= pl_module.steps:
            return
        signum = any_rank(self.signum or 0)  # every rank, every step, on the host
        if signum:
            self.signum, self.stopped_at = signum, trainer.global_step
            trainer.should_stop = True

    def teardown(self, trainer, pl_module, stage):
        """Restore the handlers from before the run. A signal that came during the last step or while the results
        were written stopped nothing, yet must still end the process (SLURM's SIGTERM, Ctrl+C between a study's runs)."""
        self.end(trainer.global_step)

    def end(self, step: int) -> None:
        """The run is over at `step`: the handlers from before are back, and a signal received stopped it there.
        Lightning's teardown calls this after a fit that ended normally; after a second signal, `pipeline.fit` does."""
        self.restore()
        if self.received and self.stopped_at is None:
            self.stopped_at = step

    def restore(self) -> None:
        """The handlers from before the run, back in place. After a failed fit Lightning puts back the handlers it
        found, this one among them: `pipeline.fit` calls this whichever way fit ended."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def exit(self) -> None:
        """After an early stop: pass the signal to the handler from before the run, else exit 128 + signum."""
        if self.stopped_at is None:
            return
        handler = self.previous.get(self.signum) if self.received else None
        if callable(handler) and handler is not signal.default_int_handler:
            handler(self.signum, None)
        raise SystemExit(128 + self.signum)


class ResultTable(pl.Callback):
    """At the end of fit, one W&B Table row per target: its metrics and its reconstruction.

    Every job of a sweep logs the same columns under `results`, so one dashboard panel
    compares the whole sweep. The rows are the run's `ResultWriter`'s records (written first
    if that callback has not yet written them), wherever it stands in the callback list.
    """

    def __init__(self, key: str = "results"):
        self.key = key

    def on_train_end(self, trainer, pl_module: RunView):
        writers = [cb for cb in trainer.callbacks if isinstance(cb, ResultWriter)]
        loggers = [lg for lg in trainer.loggers if hasattr(lg, "log_table")]
        if not writers or not loggers:
            return
        writer = writers[0]
        records = writer.finish(trainer, pl_module)  # every rank: writing gathers the targets
        if not trainer.is_global_zero or not records:
            return
        import wandb  # only W&B loggers have tables

        columns = [k for k in dict.fromkeys(k for r in records for k in r) if k != "png"]
        data = [[r.get(k) for k in columns] + [wandb.Image(str(writer.out_dir / r["png"]))] for r in records]
        for lg in loggers:
            lg.log_table(key=self.key, columns=[*columns, "reconstruction"], data=data, step=trainer.global_step)
