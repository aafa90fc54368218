"""End-to-end inversion runs on a tiny ViT: the image gets closer, the files hold the right things."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from PIL import Image
from pytorch_lightning.loggers.logger import Logger

import wandb_reader
from conftest import read_metrics

SCHEMA = {"image": str, "layer": str, "steps": int, "psnr": float, "ssim": float, "input_l2": float,
          "output_l2": float, "noise_shift_l2": float, "accurate": bool, "seconds_per_step": float}


def _csv_rows(out):
    with open(out / "csv" / "metrics.csv") as f:
        return [row for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One tiny run with both loggers, at an index layer and a module-path layer."""
    from conftest import TINY, compose_cfg
    from repinv.engine.pipeline import run

    out = tmp_path_factory.mktemp("run")
    records = run(compose_cfg([*TINY, "layers=[0,blocks.0.norm1]", "logger=default"], out)).records
    return records, out


def test_inversion_improves_psnr_and_output_l2(default_run):
    records, out = default_run
    rows = _csv_rows(out)
    first = rows[0]
    assert {r["layer"] for r in records} == {"L0", "blocks.0.norm1"}
    for r in records:
        key = f"{r['image']}/{r['layer']}"
        assert r["psnr"] > float(first[f"psnr/{key}"]) + 5, f"{key}: PSNR did not improve over the noise"
        assert r["output_l2"] < 0.5 * float(first[f"output_l2/{key}"]), f"{key}: output L2 did not halve"
        assert r["steps"] == 60 and r["status"] == "finished"


def test_the_logged_curves_end_with_the_image_the_run_returns(default_run):
    """The last CSV and W&B rows are at step `steps` and hold metrics.json's numbers."""
    records, out = default_run
    last = _csv_rows(out)[-1]
    [run] = wandb_reader.find_runs(out)
    final = [h for h in wandb_reader.history(run) if "loss" in h][-1]
    assert int(last["step"]) == final["trainer/global_step"] == 60
    for r in records:
        key = f"{r['image']}/{r['layer']}"
        for name in ("psnr", "ssim", "output_l2", "input_l2"):
            assert float(last[f"{name}/{key}"]) == pytest.approx(r[name], rel=1e-6), f"{name}/{key}"
            assert final[f"{name}/{key}"] == pytest.approx(r[name], rel=1e-6), f"{name}/{key}"


def test_metrics_json_follows_schema(default_run):
    _, out = default_run
    records = read_metrics(out)
    assert len(records) == 2
    for r in records:
        for key, kind in SCHEMA.items():
            assert isinstance(r[key], kind), f"{key} should be {kind.__name__}, got {r[key]!r}"
        assert r["accurate"] == (r["output_l2"] < r["noise_shift_l2"])
        assert 0 < r["seconds_per_step"] < 5
        assert (out / r["png"]).is_file()


def test_run_folder_holds_pngs_grid_and_resolved_config(default_run):
    records, out = default_run
    for r in records:
        png = np.asarray(Image.open(out / r["png"]))
        assert png.shape == (64, 64, 3) and png.std() > 5, "a reconstruction PNG is empty or flat"
    grid = Image.open(out / "grid.png")
    assert grid.size[0] > grid.size[1] * 2, "the grid shows target + 2 layers side by side"
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["name"] == "vit_base_patch32_224" and cfg["steps"] == 60
    assert "${" not in (out / "config.yaml").read_text(), "config.yaml must be resolved"


def test_wandb_offline_run_holds_scalars_and_images_like_csv(default_run):
    _, out = default_run
    runs = wandb_reader.find_runs(out)
    assert len(runs) == 1, "one offline W&B run under the run folder"
    history = wandb_reader.history(runs[0])
    scalar_rows = [h for h in history if "psnr/chelsea/L0" in h]
    csv_rows = _csv_rows(out)
    assert len(scalar_rows) == len(csv_rows) == 7  # steps 0,10,...,50 and the end, 60
    for h, c in zip(scalar_rows, csv_rows):
        assert h["psnr/chelsea/L0"] == pytest.approx(float(c["psnr/chelsea/L0"]), rel=1e-5)
        assert h["output_l2/chelsea/blocks.0.norm1"] == pytest.approx(float(c["output_l2/chelsea/blocks.0.norm1"]), rel=1e-5)
    images = [h["reconstruction"] for h in history if "reconstruction" in h]
    assert images and images[0]["_type"] == "images/separated" and images[0]["count"] == 2
    media = runs[0].parent / "files" / images[-1]["filenames"][0]
    assert np.asarray(Image.open(media)).std() > 5, "logged image must not be black (uint8, not float)"
    info = wandb_reader.run_info(runs[0])
    assert info["name"] == "vit_tiny-L0+blocks.0.norm1-untrained" and "untrained" in info["tags"]
    assert wandb_reader.config(runs[0])["steps"] == 60


def test_frozen_model_unchanged_and_only_image_trained(run_repinv, monkeypatch):
    import repinv.engine.pipeline as pipeline

    seen = {}
    real = pipeline.ImageOptimization

    class Spy(real):
        def on_train_start(self):
            seen["module"] = self
            seen["before"] = {k: v.clone() for k, v in self.net.state_dict().items()}

    monkeypatch.setattr(pipeline, "ImageOptimization", Spy)
    run_repinv("layers=[1]", "logger=none")
    module = seen["module"]
    assert [n for n, p in module.named_parameters() if p.requires_grad] == ["image_param.param"]
    assert all(not p.requires_grad for p in module.net.parameters())
    assert not module.net.training, "the frozen network must stay in eval mode"
    for k, v in module.net.state_dict().items():
        assert (v == seen["before"][k]).all(), f"weight {k} changed during the run"


def test_invertible_layer_recovers_the_target(run_repinv):
    """A square patch embedding (2x2x3 -> 12) loses nothing: its inversion must reach the photo."""
    records, out = run_repinv(
        "model.kwargs.patch_size=2", "model.kwargs.embed_dim=12", "model.kwargs.num_heads=2", "model.input_size=32",
        "layers=[patch_embed]", "priors=none", "optimizer=adam", "optimizer.lr=0.05", "objective.loss=mse",
        "objective.scale=1000", "steps=400", "logger=none",
    )
    assert records[0]["psnr"] > 30, records[0]
    assert records[0]["accurate"] is True


def test_csv_only_and_no_logger(run_repinv):
    _, out = run_repinv("logger=csv", name="csv")
    assert (out / "csv" / "metrics.csv").is_file() and not (out / "wandb").exists()
    _, out = run_repinv("logger=none", "steps=5", name="none")
    assert not (out / "csv").exists() and not (out / "wandb").exists()
    assert json.loads((out / "metrics.json").read_text())[0]["steps"] == 5


def test_layers_inverted_in_one_run_end_as_they_do_alone(run_repinv):
    """Batching targets of several layers (given out of depth order) changes no target's result."""
    common = ("steps=20", "log_every=19", "image_every=0")
    together, _ = run_repinv("layers=[1,patch_embed,0]", *common, name="together")
    assert [r["layer"] for r in together] == ["L1", "patch_embed", "L0"]
    for record in together:
        layer = record["layer"].removeprefix("L")
        [alone], _ = run_repinv(f"layers=[{layer}]", *common, name=f"alone_{layer}")
        for key in ("psnr", "output_l2", "input_l2"):
            assert record[key] == pytest.approx(alone[key], rel=1e-3), (record["layer"], key)


class StepCounter(pl.Callback):
    """A callback defined outside repinv: counts the steps it saw; takes the run's RunInfo by asking for `run`."""

    built: list[StepCounter] = []

    def __init__(self, every: int, run=None):
        self.every, self.name, self.steps = every, run.name if run else None, 0
        StepCounter.built.append(self)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1


def test_a_callback_defined_outside_repinv_is_used_from_config_alone(run_repinv):
    StepCounter.built.clear()
    records, out = run_repinv("steps=3", "logger=none", "layers=[0]", "+callbacks.mine._target_=test_pipeline.StepCounter",
                              "+callbacks.mine.every=2")
    [counter] = StepCounter.built
    assert (counter.every, counter.steps) == (2, 3)
    assert counter.name == f"vit_tiny-{records[0]['column']}-untrained"


def test_a_callback_left_out_in_config_is_not_run(run_repinv):
    _, out = run_repinv("steps=2", "logger=none", "layers=[0]", "callbacks.filter_grid=null")
    assert (out / "metrics.json").is_file() and not (out / "filters.png").exists()


class RecordingLogger(Logger):
    """A logger defined outside repinv: keeps what it is given; takes the run's RunInfo by asking for `run`."""

    built: list[RecordingLogger] = []

    def __init__(self, run=None):
        super().__init__()
        self.run, self.logged = run, []
        RecordingLogger.built.append(self)

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        self.params = params

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, metrics["loss"]))


def test_a_logger_defined_outside_repinv_is_used_from_config_alone(run_repinv):
    RecordingLogger.built.clear()
    records, out = run_repinv("steps=3", "log_every=1", "logger=csv", "layers=[0]",
                              "+logger.mine._target_=test_pipeline.RecordingLogger")
    [logger] = RecordingLogger.built
    assert (logger.run.name, logger.run.kind) == (f"vit_tiny-{records[0]['column']}-untrained", "layer")
    assert [step for step, _ in logger.logged] == [0, 1, 2, 3] and logger.params["steps"] == 3
    assert (out / "csv" / "metrics.csv").is_file()


def test_an_offline_wandb_run_says_how_to_upload_it(cli):
    """A run that logged to W&B offline ends by naming its offline folder, which `wandb sync` uploads."""
    code, out, _, run_dir = cli("model=vit_tiny", "layers=[0]", "steps=2", "logger=wandb")
    assert code == 0
    (folder,) = re.findall(r"upload it with `wandb sync (.+)`", out)
    assert Path(folder).is_dir() and run_dir in Path(folder).parents and Path(folder).name.startswith("offline-run-")


@pytest.mark.parametrize("every,logged", [(4, [0, 4, 8, 10]), (0, [10])])
def test_the_image_timeline_logs_every_n_steps_and_the_last_and_0_means_the_last_alone(every, logged):
    from repinv.reporting.callbacks import ImageTimeline

    steps = []
    logger = SimpleNamespace(log_image=lambda key, images, step, caption: steps.append(step))
    module = SimpleNamespace(steps=10, targets=[{"image": "cat"}], images=lambda: torch.zeros(1, 3, 4, 4))
    timeline = ImageTimeline(every)
    for step in range(11):
        timeline.on_train_batch_end(SimpleNamespace(global_step=step, is_global_zero=True, loggers=[logger]), module,
                                    None, None, step)
    assert steps == logged


def test_a_run_blurs_after_every_step_from_sigma_2_4_down_to_0_4(run_repinv, monkeypatch):
    """The study's blur schedule as a run applies it: one 3x3 blur after each of the run's steps, its sigma falling
    linearly from 2.4 at the first step to 0.4 at the last (not only what the config names or the log shows)."""
    from repinv.priors.blur import GaussianBlur

    sigmas = []
    real = GaussianBlur.update

    def spy(self, img, step, total):
        """The sigma of the taps the blur applied (its cache), not the one it would compute."""
        real(self, img, step, total)
        sigmas.append(self._cache[0])

    monkeypatch.setattr(GaussianBlur, "update", spy)
    run_repinv("steps=11", "logger=none", "checkpoint_every=0")
    assert sigmas == pytest.approx([2.4 - 0.2 * k for k in range(11)])
