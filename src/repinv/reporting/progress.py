"""The progress bar of a run: its steps ("steps 120/300"), not Lightning's epochs.

A run is one epoch of `steps` batches with `max_epochs=-1`, which Lightning's own bar shows as
"Epoch 0/-2"; the run's unit is the optimisation step.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.callbacks.progress.rich_progress import BatchesProcessedColumn


class StepsProgressBar(RichProgressBar):
    """Lightning's rich progress bar, labelled with the steps done out of the run's steps."""

    def description(self, trainer: pl.Trainer) -> str:
        """The bar's label: optimisation steps done (a resumed run starts at its checkpoint's) of `max_steps`."""
        return f"steps {trainer.global_step}/{trainer.max_steps}"

    def _get_train_description(self, current_epoch: int) -> str:
        """Where Lightning labels the bar when it creates it (at the start, or mid-epoch on resume)."""
        return self.description(self.trainer)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        """The loss of the last log step (a host number, so drawing the bar never waits for the device)."""
        loss = getattr(pl_module, "logged_loss", None)
        return {**super().get_metrics(trainer, pl_module), **({} if loss is None else {"loss": f"{loss:.3f}"})}

    def configure_columns(self, trainer: pl.Trainer) -> list:
        """Lightning's columns without its batch count, which the label now gives."""
        return [c for c in super().configure_columns(trainer) if not isinstance(c, BatchesProcessedColumn)]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        """The label follows the steps; Lightning then advances the bar and redraws it."""
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self.description(trainer))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
