"""Feature visualisation (objective=feature) on tiny models, and result files that read only the records."""

from __future__ import annotations

import csv
import json
from collections import OrderedDict

import pytest
import torch
import yaml
from PIL import Image

import wandb_reader
from conftest import REPO, read_metrics
from repinv.errors import RepinvError
from repinv.objectives import Objective

FEATURE = ["objective=feature", "steps=40", "log_every=10", "image_every=20"]


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_vit_unit_activation_rises_far_above_its_start(run_repinv):
    # without the blur prior, whose early sigma keeps 40 steps from leaving the low frequencies
    records, out = run_repinv("model=vit_tiny", *FEATURE, "objective.layer=1", "objective.units=[3]", "regularizer=none",
                              "logger=wandb", tiny=False)
    (r,) = records
    assert (r["image"], r["layer"], r["unit"], r["column"]) == ("sample0", "L1", 3, "unit 3")
    assert r["caption"] == f"act {r['activation']:.3g}" and r["loss"] == pytest.approx(-r["activation"], rel=1e-5)
    [run] = wandb_reader.find_runs(out)
    logged = [h["activation/sample0/L1/3"] for h in wandb_reader.history(run) if "activation/sample0/L1/3" in h]
    start = logged[0]  # measured by the objective on the initial noise (step 0)
    assert len(logged) == 5 and r["activation"] > start + 10 and r["activation"] > 50 * abs(start)
    info = wandb_reader.run_info(run)
    assert info["job_type"] == "feature" and info["name"] == "vit_tiny-L1-unit3-untrained"
    assert {"feature", "layer:L1", "unit:3"} <= set(info["tags"])
    assert read_metrics(out)[0]["column"] == "unit 3" and Image.open(out / r["png"]).size == (64, 64)
    assert Image.open(out / "grid.png").size[0] > 100
    assert r["png"] == "reconstructions/sample0__unit-3.png"


def test_resnet_channels_and_token_pairs_rise_per_sample(run_repinv):
    records, out = run_repinv("model=resnet_tiny", *FEATURE, "objective.layer=layer2", "objective.units=[1,[5,2]]",
                              "objective.samples=2", "regularizer=none", "logger=csv", tiny=False)
    assert [(r["image"], r["unit"], r.get("token"), r["column"]) for r in records] == [
        ("sample0", 1, None, "unit 1"), ("sample1", 1, None, "unit 1"),
        ("sample0", 2, 5, "unit 2@5"), ("sample1", 2, 5, "unit 2@5")]
    first = _csv(out / "csv" / "metrics.csv")[0]
    for r in records:
        key = "/".join(str(r[k]) for k in ("image", "layer", "unit", "token") if k in r)
        assert r["activation"] > float(first[f"activation/{key}"]) + 2, key
    a, b = (torch.tensor(list(Image.open(out / r["png"]).getdata())) for r in records[:2])
    assert not torch.equal(a, b), "each sample starts from its own noise"


def test_feature_alone_runs_on_the_default_model_at_its_middle_layer(run_repinv):
    """objective=feature brings class generation's prior and optimiser: blur, jitter, Adam."""
    records, out = run_repinv("objective=feature", "steps=2", "log_every=1", "logger=none", tiny=False)
    assert [(r["layer"], r["unit"], r["column"]) for r in records] == [("L6", 0, "unit 0")]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["label"] == "vit_b_32" and cfg["optimizer"]["_target_"] == "torch.optim.Adam"
    assert cfg["priors"]["blur"]["every"] == 1 and cfg["priors"]["jitter"]["pixels"] == 16


def test_a_shard_scores_only_its_own_targets():
    from repinv.models.taps import resolve_layer
    from repinv.objectives.feature import FeatureVisualization

    net = torch.nn.Sequential(OrderedDict(conv=torch.nn.Conv2d(3, 4, 3), relu=torch.nn.ReLU(), out=torch.nn.Conv2d(4, 6, 3)))
    whole, part = FeatureVisualization("out", units=[0, 3, 5]), FeatureVisualization("out", units=[0, 3, 5])
    for objective in (whole, part):
        objective.setup(net, lambda x: x, [], 0)
    part.shard([1, 2])
    x = torch.rand(3, 3, 8, 8)
    (loss, stats), (loss_part, stats_part) = whole(net, x), part(net, x[1:])
    assert torch.allclose(loss[1:], loss_part) and torch.allclose(stats["activation"][1:], stats_part["activation"])
    expected = net(x)[[0, 1, 2], [0, 3, 5]].mean((1, 2))
    assert torch.allclose(stats["activation"], expected) and resolve_layer(net, "out").label == whole.targets[0]["layer"]


def test_two_spellings_of_one_layer_start_a_unit_from_the_same_noise():
    """`layer=0` and `layer=blocks.0` are one layer of a ViT: each unit starts from the same noise either way, and
    each unit (and sample) from noise of its own."""
    import timm

    from repinv.objectives.feature import FeatureVisualization

    net = timm.create_model("vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8, embed_dim=16, num_heads=2)
    seeds = {}
    for spelling in (0, "blocks.0"):
        objective = FeatureVisualization(spelling, units=[1, 3], samples=2)
        objective.setup(net, lambda x: x, [], 7)
        seeds[spelling] = objective.init_seeds(7)
    assert seeds[0] == seeds["blocks.0"] and len(set(seeds[0])) == 4


def test_a_unit_outside_the_layer_is_a_clear_error(run_repinv):
    with pytest.raises(RepinvError, match="channels 0..63"):
        run_repinv("model=vit_tiny", "objective=feature", "objective.layer=1", "objective.units=[64]", "steps=2",
                   "logger=none", tiny=False)


class Blob(Objective):
    """An objective no result writer knows: its records name their own column, caption and metric."""

    kind = "blob"

    def column(self, record):
        return f"blob {record['blob']}"

    def caption(self, record, metrics=()):
        return f"wobble={record['wobble']:.1f}"

    @classmethod
    def plan(cls, cfg, depth):
        return [{"blob": b, "column": f"blob {b}"} for b in cfg.blobs]


def _blob_job(folder, blobs: list[int]):
    """A finished job folder of the Blob objective, written by the run's own result writer."""
    from repinv.reporting.results import write_results

    records = [Blob().finalize({"image": "x", "blob": b, "wobble": b + 0.25, "loss": 1.0, "status": "finished"}) for b in blobs]
    write_results(folder, records, torch.rand(len(blobs), 3, 8, 8), title="blob")
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(f"- seed={folder.name}\n")


def test_captions_and_csv_columns_come_from_the_records(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import figlib

    import repinv.reporting.results
    import repinv.reporting.summary
    from repinv.reporting.summary import summarize

    titles = []

    def spy(real):
        return lambda rows, *a, **k: titles.extend(t for row in rows for _, t in row) or real(rows, *a, **k)

    for module in (repinv.reporting.results, repinv.reporting.summary, figlib):
        monkeypatch.setattr(module, "titled_grid", spy(module.titled_grid))
    sweep = tmp_path / "sweep"
    _blob_job(sweep / "0", [1, 2])
    assert [(r["column"], r["caption"]) for r in read_metrics(sweep / "0")] == [("blob 1", "wobble=1.2"),
                                                                                ("blob 2", "wobble=2.2")]
    assert {"blob 1 · wobble=1.2", "blob 2 · wobble=2.2"} <= set(titles)
    failed = sweep / "1"  # a job that failed before writing records: its objective plans its cells
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (failed / ".hydra" / "config.yaml").write_text("objective:\n  _target_: test_feature.Blob\n  blobs: [3]\n")
    (failed / "error.txt").write_text("blob 3 went wrong\n")
    out = summarize(sweep)
    rows = _csv(out["csv"])
    assert [(r["job"], r["column"], r["blob"], r["wobble"], r["caption"], r["status"]) for r in rows] == [
        ("0", "blob 1", "1", "1.25", "wobble=1.2", "finished"), ("0", "blob 2", "2", "2.25", "wobble=2.2", "finished"),
        ("1", "blob 3", "3", "", "", "failed")]
    assert list(rows[0])[:5] == ["job", "condition", "status", "image", "column"] and list(rows[0])[-1] == "error"
    assert "wobble=2.2" in out["md"].read_text() and "blob 3 · failed" in titles
    figure = figlib.Panel("blobs", [])
    png, table = figlib.assemble("blobs", "blobs", [figure], {"blobs": ("finished", sweep / "0", "untrained")}, tmp_path / "fig")
    figure_rows = _csv(table)
    assert [(r["panel"], r["column"], r["wobble"]) for r in figure_rows] == [("blobs", "blob 1", "1.25"),
                                                                             ("blobs", "blob 2", "2.25")]
    assert json.loads((sweep / "0" / "metrics.json").read_text())[0]["png"] == "reconstructions/x__blob-1.png"
    assert png.is_file() and "blob 2 · wobble=2.2" in titles
