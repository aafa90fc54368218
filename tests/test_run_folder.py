"""A run folder holds one run: nothing is written before a run's settings are accepted, an unfinished run is
never overwritten, a resume cannot change what the run optimises, and its logs keep up with its checkpoints."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
from test_reliability import _signal_at

import wandb_reader
from conftest import REPO, read_metrics

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
FAST = ["model=vit_tiny", "layers=[0]", "steps=8", "log_every=2", "checkpoint_every=4", "logger=csv"]
FOURIER = [*FAST, "param=fourier", "optimizer=adam", "optimizer.lr=0.02"]


def snapshot(folder) -> dict:
    """Every file under `folder` with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_paragraph(code: int, err: str) -> str:
    assert code == 2, err[-3000:]
    assert err.startswith("repinv: error: ") and "Traceback" not in err and "\n\n" not in err.strip(), err
    return " ".join(err.split())


@pytest.fixture
def interrupted(cli, monkeypatch):
    """A Fourier run stopped by SIGTERM during step 5: its folder holds a checkpoint at step 6 of 8."""
    import repinv.engine.pipeline as pipeline

    plain = pipeline.ImageOptimization
    _signal_at(pipeline, monkeypatch, 5)
    code, _, err, run_dir = cli(*FOURIER)
    monkeypatch.setattr(pipeline, "ImageOptimization", plain)
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert [r["status"] for r in read_metrics(run_dir)] == ["interrupted"]
    return run_dir


def test_a_refused_resume_leaves_the_run_folder_as_it_was_and_its_advice_works(cli, interrupted):
    before = snapshot(interrupted)
    assert ".hydra/overrides.yaml" in before and "config.yaml" in before
    code, _, err, _ = cli(*FOURIER, "param=pixel", "resume=last")
    message = one_paragraph(code, err)
    assert "param._target_" in message and "cannot change on resume" in message and "), ;" not in message, message
    assert "hydra.run.dir=<new folder>" in message and "resume_allow_changes=[param" not in message, message
    assert snapshot(interrupted) == before, "a refused resume rewrote files of the run it refused"

    code, _, err, _ = cli(*FOURIER, "param=pixel", "resume=last", "resume_allow_changes=[param._target_,param.decay]")
    assert "would change what the run optimises" in one_paragraph(code, err)
    assert snapshot(interrupted) == before

    code, _, err, fresh = cli(*FAST, "param=pixel", name="fresh")  # the advice: a new folder
    assert code == 0, err[-2000:]
    assert [r["status"] for r in read_metrics(fresh)] == ["finished"]
    code, _, err, _ = cli(*FOURIER, "resume=last")  # or the run's own settings
    assert code == 0, err[-2000:]
    assert [(r["status"], r["steps"]) for r in read_metrics(interrupted)] == [("finished", 8)]


@pytest.mark.parametrize("allowed", ["model", "[model]", "[model.name]", "[image]", "[layers]", "[seed]", "[init.std]",
                                     "[objective]", "[surgery]"])
def test_a_resume_may_not_allow_changes_to_what_the_run_optimises(cli, interrupted, allowed):
    before = snapshot(interrupted)
    code, _, err, _ = cli(*FOURIER, "resume=last", f"resume_allow_changes={allowed}")
    message = one_paragraph(code, err)
    assert f"resume_allow_changes={allowed.strip('[]')} would change what the run optimises" in message, message
    assert snapshot(interrupted) == before


def test_a_fresh_run_does_not_overwrite_an_unfinished_one(cli, interrupted):
    before = snapshot(interrupted)
    code, _, err, _ = cli(*FOURIER)
    message = one_paragraph(code, err)
    assert "holds an unfinished run" in message and "step 6 of 8" in message, message
    assert "resume=last" in message and "hydra.run.dir=<new folder>" in message, message
    assert snapshot(interrupted) == before


def test_a_run_resumed_from_another_folder_does_not_overwrite_an_unfinished_one(cli, interrupted, monkeypatch):
    """Its checkpoint and its logs would be replaced by (and mixed with) the other run's."""
    import repinv.engine.pipeline as pipeline

    plain = pipeline.ImageOptimization
    _signal_at(pipeline, monkeypatch, 2)
    code, _, _, other = cli(*FOURIER, name="other")
    monkeypatch.setattr(pipeline, "ImageOptimization", plain)
    assert code == 128 + signal.SIGTERM
    before = snapshot(interrupted)
    code, _, err, _ = cli(*FOURIER, f"resume={other}")
    message = one_paragraph(code, err)
    assert f"{interrupted} holds an unfinished run" in message and "step 6 of 8" in message, message
    assert snapshot(interrupted) == before


def test_a_run_without_psnr_finishes_with_its_other_metrics(cli):
    code, _, err, run_dir = cli(*FAST, "metrics.psnr=null")
    assert code == 0, err[-3000:]
    records = read_metrics(run_dir)
    assert [r["status"] for r in records] == ["finished"] and "psnr" not in records[0]
    assert records[0]["caption"] == f"input_l2 {records[0]['input_l2']:.3g}"
    assert (run_dir / records[0]["png"]).is_file() and (run_dir / "grid.png").is_file()
    with open(run_dir / "csv" / "metrics.csv") as f:
        assert not any("psnr" in column for column in next(csv.reader(f)))
    assert "could not write results" not in (run_dir / "cli.log").read_text()


def test_a_file_image_loads_without_a_warning(tmp_path):
    """torch warns once per process, so a fresh one loads the file."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "black.png")
    code = f"from repinv.inputs.images import load_images; load_images({str(tmp_path / 'black.png')!r}, 64)"
    res = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "not writable" not in res.stderr, res.stderr


def _csv_steps(run_dir) -> list[int]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [int(float(r["step"])) for r in csv.DictReader(f) if r.get("loss")]


def _wandb_steps(run_dir) -> set[int]:
    """The steps of every row in the run folder's offline W&B runs (a resumed run is a second offline folder)."""
    return {int(r["trainer/global_step"]) for f in run_dir.glob("wandb/offline-run-*/run-*.wandb")
            for r in wandb_reader.history(f) if "loss" in r}


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_and_resumed_logs_every_step(tmp_path):
    """SIGKILL (no handler runs) after the checkpoint at step 40: the resumed run's CSV and W&B history have every
    logged step, and the resume says nothing about the dataloader."""
    run_dir = tmp_path / "run"
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_CACHE_DIR": str(tmp_path / "cache"),
           "WANDB_CONFIG_DIR": str(tmp_path / "config"), "WANDB_DATA_DIR": str(tmp_path / "data")}
    args = [sys.executable, "-m", "repinv", "model=vit_tiny", "layers=[0]", "steps=400", "log_every=5",
            "checkpoint_every=40", "logger=default", "image_every=1000", "+trainer.enable_progress_bar=false",
            f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    err = proc.communicate()[1]
    assert ckpt.is_file(), err[-3000:]
    import torch

    step = torch.load(ckpt, weights_only=False)["global_step"]
    assert step < 400, "the run finished before it was killed"
    assert set(range(0, step, 5)) <= set(_csv_steps(run_dir)), "the checkpoint's steps are not all in the CSV log"

    done = subprocess.run([*args, "resume=last"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _csv_steps(run_dir) == [*range(0, 400, 5), 400]
    assert _wandb_steps(run_dir) == {*range(0, 400, 5), 400}, "the W&B history lacks steps the checkpoint holds"
    assert "not resumable" not in done.stdout + done.stderr, "the steps' dataloader needs no state to resume"
