"""Lightning callbacks: image timelines for the loggers, the model's input filters and the run's result files."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

from repinv.figures import filter_grid, filter_stats, input_conv, to_uint8
from repinv.results import write_results

log = logging.getLogger(__name__)


def _image_loggers(trainer: pl.Trainer):
    return [lg for lg in trainer.loggers if hasattr(lg, "log_image")]


class ImageTimeline(pl.Callback):
    """Every `every` steps, log the reconstructions to each logger that takes images (W&B)."""

    def __init__(self, every: int = 100):
        self.every = max(int(every), 1)

    @rank_zero_only
    def on_train_start(self, trainer, pl_module):
        ref = getattr(pl_module.objective, "reference", None)
        if ref is None or trainer.global_step:
            return
        names = dict.fromkeys(r.get("image") for r in pl_module.records)
        refs = ref[: len(names)]
        for lg in _image_loggers(trainer):
            lg.log_image(key="target", images=[to_uint8(x) for x in refs], step=0, caption=list(names))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every and step != pl_module.steps:
            return
        imgs = pl_module.all_images()  # every rank takes part; only rank 0's loggers write
        if not trainer.is_global_zero:
            return
        imgs = [to_uint8(x) for x in imgs]
        captions = [pl_module.target_key(i) for i in range(len(imgs))]
        for lg in _image_loggers(trainer):
            lg.log_image(key="reconstruction", images=imgs, step=step, caption=captions)


class FilterGrid(pl.Callback):
    """At train start, the model's first filters on the image as `filters.png` (and their numbers
    as `filters.json`) in the run folder, also logged as image `filters`. Models without a
    3-channel first convolution are skipped."""

    def __init__(self, out_dir: str | Path, key: str = "filters"):
        self.out_dir, self.key = Path(out_dir), key

    @rank_zero_only
    def on_train_start(self, trainer, pl_module):
        found = input_conv(pl_module.net)
        if found is None or trainer.global_step:
            return
        module, conv = found
        filters = conv.weight.detach().float().cpu()
        path = filter_grid(filters, self.out_dir / f"{self.key}.png")
        (self.out_dir / f"{self.key}.json").write_text(json.dumps({"module": module, **filter_stats(filters)}, indent=1))
        caption = f"{module}: {filters.shape[0]} filters {filters.shape[-2]}x{filters.shape[-1]}"
        for lg in _image_loggers(trainer):
            lg.log_image(key=self.key, images=[str(path)], step=0, caption=[caption])


class ResultWriter(pl.Callback):
    """Writes PNGs, the grid and metrics.json at the end of fit, and also when a run is interrupted."""

    def __init__(self, out_dir: str | Path, title: str | None = None):
        self.out_dir = Path(out_dir)
        self.title = title
        self.records: list[dict] = []
        self._t0: float | None = None
        self._step0 = 0
        self.paths: dict[str, Path] = {}

    def on_train_start(self, trainer, pl_module):
        self._t0, self._step0 = None, trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def seconds_per_step(self, trainer) -> float | None:
        done = trainer.global_step - self._step0
        if self._t0 is None or done <= 0:
            return None
        return (time.perf_counter() - self._t0) / done

    def write(self, trainer, pl_module, status: str, gathered: bool = True) -> None:
        """Gather every rank's targets (collective), then rank 0 writes the files."""
        extra = {"steps": trainer.global_step, "seconds_per_step": self.seconds_per_step(trainer), "status": status,
                 "model": pl_module.model_info.label, "trained": pl_module.model_info.trained}
        records = [{**r, **extra} for r in pl_module.final_metrics(gathered)]
        images = pl_module.all_images() if gathered else pl_module.current_images()
        if not trainer.is_global_zero:
            return
        ref = pl_module.objective.reference
        refs = {}
        if ref is not None:
            names = list(dict.fromkeys(r["image"] for r in pl_module.records))
            refs = dict(zip(names, ref[: len(names)].cpu()))
        self.records, self.paths = write_results(self.out_dir, records, images.cpu(), refs, self.title)
        log.info("results written to %s", self.out_dir)

    def on_train_end(self, trainer, pl_module):
        self.write(trainer, pl_module, "finished")

    def on_exception(self, trainer, pl_module, exception):
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "crashed"
        try:
            self.write(trainer, pl_module, status, gathered=trainer.world_size == 1)
        except Exception:  # the original exception matters more than a failed write
            log.exception("could not write results after the run was %s", status)


class ResultTable(pl.Callback):
    """At the end of fit, one W&B Table row per target: its metrics and its reconstruction.

    Every job of a sweep logs the same columns under `results`, so one dashboard panel
    compares the whole sweep. Runs after `ResultWriter`, whose records and PNGs it reads.
    """

    def __init__(self, writer: ResultWriter, key: str = "results"):
        self.writer, self.key = writer, key

    @rank_zero_only
    def on_train_end(self, trainer, pl_module):
        loggers = [lg for lg in trainer.loggers if hasattr(lg, "log_table")]
        records = self.writer.records
        if not loggers or not records:
            return
        import wandb  # only W&B loggers have tables

        columns = [k for k in dict.fromkeys(k for r in records for k in r) if k != "png"]
        data = [[r.get(k) for k in columns] + [wandb.Image(str(self.writer.out_dir / r["png"]))] for r in records]
        for lg in loggers:
            lg.log_table(key=self.key, columns=[*columns, "reconstruction"], data=data, step=trainer.global_step)
