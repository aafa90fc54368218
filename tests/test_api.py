"""`repinv.run`: the command as a Python call returns the run's records and images and writes its folder."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra

import repinv
from conftest import TINY, read_metrics

FAST = [*TINY, "steps=3", "logger=none"]


def test_run_returns_records_and_images_and_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result = repinv.run([*FAST, "layers=[0,1]", "image=[chelsea,astronaut]", f"hydra.run.dir={out}"])
    assert len(result.records) == 4, "one record per (image, layer)"
    assert tuple(result.images.shape) == (4, 3, 64, 64)
    assert 0 <= float(result.images.min()) and float(result.images.max()) <= 1
    assert result.out_dir == out
    assert [(r["image"], r["layer"], r["psnr"]) for r in read_metrics(out)] == \
        [(r["image"], r["layer"], r["psnr"]) for r in result.records]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["steps"] == 3 and cfg["output_dir"] == str(out), "config.yaml is resolved, ${hydra:...} included"
    from PIL import Image

    assert Image.open(out / "grid.png").size == (3 * 220, 2 * 220 + 40), "a row per image: the target, then a column per layer"
    assert f"results written to {out}" in (out / "cli.log").read_text(), "cli.log holds the run's log"
    assert "layers=[0,1]" in (out / ".hydra" / "overrides.yaml").read_text()


def test_two_calls_in_one_process_each_write_their_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    initialize_config_module(config_module="repinv.conf", version_base="1.3")  # as a notebook may leave Hydra
    try:
        first = repinv.run([*FAST, "layers=[0]"])
        second = repinv.run([*FAST, "layers=[0,1]", "hydra.run.dir=second"])
        assert GlobalHydra.instance().is_initialized(), "the notebook's own Hydra is left as it was"
    finally:
        GlobalHydra.instance().clear()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", first.out_dir.name)
    assert first.out_dir.parent == tmp_path / "logs" / "runs", "the command's default folder, under the current one"
    assert second.out_dir == tmp_path / "second"
    assert [len(first.records), len(second.records)] == [1, 2]
    assert len(read_metrics(first.out_dir)) == 1 and len(read_metrics(second.out_dir)) == 2


@pytest.mark.parametrize("override,needle", [
    ("model=vit_tinyy", "Did you mean 'vit_tiny'"),
    ("stepz=3", "Could not override 'stepz'"),
    ("layers=[0,", "do not compose"),
    ("steps=0", "steps=0 must be a positive whole number"),
    ("hydra.mode=MULTIRUN", "repinv.run runs one job. Run a sweep with the command"),
    ("image=/data/photo (1).png", "A path with spaces, parentheses, brackets, ~ or letters beyond ASCII goes in quotes "
                                  "inside its override, e.g. 'image=\"~/photos/café (1).png\"'."),
])
def test_bad_input_raises_repinv_error(tmp_path, override, needle):
    with pytest.raises(repinv.RepinvError, match=re.escape(needle)) as err:
        repinv.run([*FAST, override, f"hydra.run.dir={tmp_path}"])
    assert "\n" not in str(err.value), "one paragraph"


def test_a_string_instead_of_a_list_raises_repinv_error():
    with pytest.raises(repinv.RepinvError, match=re.escape("['model=vit_tiny', 'steps=3']")):
        repinv.run("model=vit_tiny steps=3")


def test_the_priors_former_name_gives_the_same_run(tmp_path):
    """`regularizer` is the priors group's former name: spelled either way, the run and its resolved config are the same."""
    runs = {name: repinv.run([*FAST, f"{name}=tv", f"{name}.tv.weight=0.01", f"++{name}.jitter.pixels=2",
                              f"hydra.run.dir={tmp_path / name}"]) for name in ("regularizer", "priors")}
    old, new = runs["regularizer"], runs["priors"]
    untimed = [[{k: v for k, v in r.items() if k != "seconds_per_step"} for r in run.records] for run in (old, new)]
    assert torch.equal(old.images, new.images) and untimed[0] == untimed[1]
    configs = [yaml.safe_load((tmp_path / name / "config.yaml").read_text().replace(str(tmp_path / name), "RUN"))
               for name in runs]
    for cfg in configs:
        cfg.pop("output_dir")
    assert configs[0] == configs[1] and "regularizer" not in configs[0]
    assert configs[0]["priors"]["tv"]["weight"] == 0.01 and configs[0]["priors"]["jitter"]["pixels"] == 2


def test_a_run_leaves_the_callers_logging_and_torch_precision_as_they_were(tmp_path):
    """A notebook's own log file keeps its lines after a run, and its matmul precision stays its own."""
    import logging

    root, mine = logging.getLogger(), logging.FileHandler(tmp_path / "mine.log")
    handlers, level = list(root.handlers), root.level
    matmul, tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    root.addHandler(mine)
    root.setLevel(logging.WARNING)
    torch.set_float32_matmul_precision("medium")
    torch.backends.cudnn.allow_tf32 = True
    try:
        repinv.run([*FAST, "matmul_precision=highest", f"hydra.run.dir={tmp_path / 'run'}"])
        logging.warning("a line after the run")
        assert mine in root.handlers and root.level == logging.WARNING
        assert torch.get_float32_matmul_precision() == "medium" and torch.backends.cudnn.allow_tf32
    finally:
        mine.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = tf32
    assert "a line after the run" in (tmp_path / "mine.log").read_text()
    assert "a line after the run" not in (tmp_path / "run" / "cli.log").read_text()


def test_ctrl_c_raises_keyboard_interrupt_after_writing_the_results(tmp_path, monkeypatch):
    """A notebook or script stops a call with Ctrl+C as any other Python code: KeyboardInterrupt, not the command's
    exit code; the run stopped after a step and kept its results."""
    import os
    import signal

    import repinv.engine.pipeline as pipeline

    class CtrlCAt2(pipeline.ImageOptimization):
        def training_step(self, batch, batch_idx):
            if self.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return super().training_step(batch, batch_idx)

    monkeypatch.setattr(pipeline, "ImageOptimization", CtrlCAt2)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        repinv.run([*TINY, "steps=30", "logger=none", f"hydra.run.dir={out}"])
    assert {(r["status"], r["steps"]) for r in read_metrics(out)} == {("interrupted", 3)}


def test_each_record_measures_and_saves_its_own_photographs_reconstruction(tmp_path):
    """Two photographs at two layers: each record's PNG is the reconstruction returned for it (to the uint8 rounding),
    and its PSNR is that reconstruction's against its own photograph, not another target's."""
    import numpy as np
    from PIL import Image

    from repinv.inputs.images import load_images
    from repinv.metrics import psnr

    result = repinv.run([*FAST, "layers=[0,1]", "image=[chelsea,astronaut]", f"hydra.run.dir={tmp_path / 'run'}"])
    photos = {i.name: i.pixels for i in load_images(["chelsea", "astronaut"], 64)}
    assert sorted(r["image"] for r in result.records) == ["astronaut", "astronaut", "chelsea", "chelsea"]
    for record, image in zip(result.records, result.images):
        png = np.asarray(Image.open(result.out_dir / record["png"]).convert("RGB"), dtype=np.float32) / 255
        assert np.abs(png - image.permute(1, 2, 0).numpy()).max() <= 1 / 255 + 1e-6, record["png"]
        own = float(psnr(image[None], photos[record["image"]][None]))
        assert record["psnr"] == pytest.approx(own, abs=1e-3), record["image"]
