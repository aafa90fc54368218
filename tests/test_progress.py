"""The progress bar reads the run's steps ("steps 2/5"), not Lightning's "Epoch 0/-2"."""

from __future__ import annotations

import io

import pytorch_lightning as pl
from pytorch_lightning.demos.boring_classes import BoringModel
from rich.console import Console

import repinv
from conftest import TINY
from repinv.reporting.progress import StepsProgressBar


class RenderBar(pl.Callback):
    """Renders the progress bar's training row as text after each batch."""

    def __init__(self, bar: StepsProgressBar):
        self.bar, self.rows = bar, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        buf = io.StringIO()
        Console(file=buf, width=120, color_system=None).print(self.bar.progress.make_tasks_table([self.bar.train_progress_bar]))
        self.rows.append(buf.getvalue().strip())


def test_bar_reads_steps_done_of_the_run_steps(tmp_path):
    bar = StepsProgressBar()
    render = RenderBar(bar)
    trainer = pl.Trainer(max_steps=5, max_epochs=-1, callbacks=[bar, render], logger=False, enable_checkpointing=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    assert [row.split()[:2] for row in render.rows] == [["steps", f"{k}/5"] for k in range(1, 6)]
    assert not any("Epoch" in row for row in render.rows)


def test_a_run_shows_its_steps(tmp_path, capsys):
    repinv.run([*TINY, "steps=3", "logger=none", f"hydra.run.dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "steps 3/3" in out and "Epoch" not in out, out[-2000:]
