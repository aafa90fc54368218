"""Class generation (objective=class) on tiny untrained models: the drawn classes win."""

from __future__ import annotations

import csv
import json
import re
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image

from conftest import REPO, compose_cfg, read_metrics
from repinv.engine.module import ImageOptimization
from repinv.inputs.classes import resolve_class
from repinv.priors import Jitter, Octaves
from repinv.reporting.callbacks import ResultWriter
from repinv.reporting.results import PROCESS, share_file

CLASS = ["model=vit_tiny", "objective=class", "steps=40", "log_every=10", "image_every=20", "logger=csv"]


def test_each_class_logit_rises_and_ends_as_the_top_class(run_repinv):
    records, out = run_repinv(*CLASS, "classes=[goldfish,207,'tench']", tiny=False)
    assert [(r["class"], r["class_name"]) for r in records] == [(1, "goldfish"), (207, "golden retriever"), (0, "tench")]
    with open(out / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("logit/sample0/1/goldfish")]
    for r in records:
        key = f"sample0/{r['class']}/{r['class_name']}"
        first = float(rows[0][f"logit/{key}"])
        assert float(rows[0][f"rank/{key}"]) > 10  # noise is not the class to begin with
        assert r["logit"] > first + 0.1 and r["rank"] == 0 and r["prob"] > 1 / 1000
    disk = read_metrics(out)
    assert all({"class", "class_name", "logit", "prob", "rank", "steps", "seconds_per_step"} <= set(d) for d in disk)
    assert all(d["steps"] == 40 and d["status"] == "finished" for d in disk)
    for d in disk:
        assert Image.open(out / d["png"]).size == (64, 64)
    assert Image.open(out / "grid.png").size[0] > 3 * 100


def test_samples_are_distinct_images_of_one_class(run_repinv):
    records, out = run_repinv(*CLASS, "classes=207", "objective.samples=2", "steps=2", tiny=False)
    assert [(r["image"], r["class"]) for r in records] == [("sample0", 207), ("sample1", 207)]
    a, b = (torch.tensor(list(Image.open(out / r["png"]).getdata())) for r in records)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("classes,columns", [("[134,517]", ["crane (134)", "crane (517)"]),
                                             ("[264,474]", ["Cardigan (264)", "cardigan (474)"])])
def test_two_classes_of_one_name_keep_an_image_each(run_repinv, classes, columns):
    """ImageNet's 134 and 517 are both 'crane', 264 and 474 'Cardigan' and 'cardigan' (one file name on a
    case-insensitive file system): each class's image is its own file, its column names its index."""
    records, out = run_repinv(*CLASS, f"classes={classes}", "steps=2", tiny=False)
    assert [r["column"] for r in records] == columns
    a, b = (out / r["png"] for r in records)
    assert a.name.casefold() != b.name.casefold() and a.is_file() and b.is_file()


@pytest.mark.parametrize("model", ["mixer_tiny", "resnet_tiny", "convmixer_tiny", "tv_vit_tiny"])
def test_every_zoo_family_generates_classes(model, run_repinv):
    records, _ = run_repinv(*CLASS, f"model={model}", "classes=[3]", "steps=3", "log_every=1", "logger=none", tiny=False)
    (r,) = records
    assert r["class"] == 3 and r["steps"] == 3 and 0 < r["prob"] < 1 and r["rank"] >= 0


class _Record(pl.Callback):
    """The canvas before and after each step, and the crop offset the step used."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        gen = torch.Generator()
        gen.set_state(module.generator.get_state())
        offset = module.canvas.offset(trainer.global_step, gen)
        self.steps.append([module.canvas.image.detach().clone(), offset])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps[-1].append(module.canvas.image.detach().clone())


def test_jitter_updates_only_the_crop(tmp_path):
    cfg = compose_cfg(["model=vit_tiny", "objective=class", "classes=[1,2]"], tmp_path)
    from repinv.engine.pipeline import Steps

    module = ImageOptimization(
        model=instantiate(cfg.model), objective=instantiate(cfg.objective), images=[],
        optimizer=instantiate(cfg.optimizer), priors=[instantiate(cfg.priors.blur), Jitter(pixels=12, start=1)],
        steps=4,
    )
    rec = _Record()
    trainer = pl.Trainer(max_steps=4, logger=False, callbacks=[rec], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(Steps(4), batch_size=None))
    assert module.canvas.image.shape[-1] == 64 + 12
    offsets = {tuple(o) for _, o, _ in rec.steps[1:]}
    assert rec.steps[0][1] == (6, 6) and len(offsets) > 1  # centre before `start`, random crops after
    for before, (dy, dx), after in rec.steps:
        inside = torch.zeros_like(before, dtype=torch.bool)
        inside[:, :, dy : dy + 64, dx : dx + 64] = True
        assert torch.equal(before[~inside], after[~inside])
        assert (before[inside] - after[inside]).abs().max() > 1e-4


def _roughness(img: torch.Tensor) -> float:
    return float((img[..., 1:, :] - img[..., :-1, :]).abs().mean() + (img[..., 1:] - img[..., :-1]).abs().mean())


def test_octaves_generate_small_then_leave_the_full_size_alone():
    oct = Octaves([0.25, 0.5, 1.0])
    assert [oct.scale(s, 9) for s in range(9)] == [0.25] * 3 + [0.5] * 3 + [1.0] * 3
    noise = torch.rand(1, 3, 32, 32)
    coarse, finer = noise.clone(), noise.clone()
    oct.update(coarse, 0, 9)
    oct.update(finer, 4, 9)
    assert _roughness(coarse) < 0.3 * _roughness(finer) < 0.3 * _roughness(noise)
    again = coarse.clone()
    oct.update(again, 1, 9)  # a projection: a second step at the same octave leaves the image as it is
    assert (again - coarse).abs().max() < 1e-5
    small = F.interpolate(F.interpolate(noise, size=(8, 8), mode="area"), size=(32, 32), mode="bilinear")
    upscaled = small.clone()
    oct.update(upscaled, 0, 9)  # an image that already is an upscaled 8x8 one stays as it is
    assert (upscaled - small).abs().max() < 1e-5
    full = noise.clone()
    oct.update(full, 8, 9)
    assert torch.equal(full, noise)


def test_a_crashed_process_share_keeps_each_class_rank(tmp_path):
    """After a crash with several processes each record names its process in its own field: the class's rank among
    all classes (0 = top) stays what the objective measured."""
    record = {"class": 1, "class_name": "goldfish", "column": "goldfish", "logit": 9.0, "prob": 0.8, "rank": 0.0}
    run = SimpleNamespace(final_metrics=lambda gathered: [dict(record)], images=lambda gathered: torch.rand(1, 3, 8, 8),
                          model_info=SimpleNamespace(label="vit_tiny", trained=False, trained_parts=False),
                          targets=[{"class": 0}, {"class": 1}])
    trainer = SimpleNamespace(global_rank=1, world_size=2, is_global_zero=False, global_step=5)
    ResultWriter(tmp_path).write_share(trainer, run, "crashed")
    (share,) = json.loads((tmp_path / share_file(1)).read_text())
    assert share["rank"] == 0.0 and share[PROCESS] == 1 and share["status"] == "crashed"


def test_the_readme_class_commands_name_each_class_once():
    """The README's class-generation commands run as shown: every class they list is an ImageNet class, named once."""
    readme = (REPO / "README.md").read_text().splitlines()
    commands = [line for line in readme if "objective=class" in line and "classes=[" in line]
    assert commands
    for line in commands:
        listed = re.search(r"classes=\[([^\]]*)\]", line).group(1).split(",")
        indices = [resolve_class(name, 1000) for name in listed]
        assert len(set(indices)) == len(indices), line
