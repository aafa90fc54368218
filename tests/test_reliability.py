"""Interruptions, resume, divergence: a stopped run keeps its results and continues exactly."""

from __future__ import annotations

import csv
import errno
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY, read_metrics
from repinv.reporting.callbacks import last_checkpoint

# Blur, linear learning-rate decay and jitter all depend on the step: a resume that got the step,
# the schedule or the jitter RNG wrong would end with a different image.
RESUMABLE = ["steps=30", "log_every=5", "checkpoint_every=10", "regularizer=blur_jitter",
             "regularizer.jitter.pixels=4", "regularizer.jitter.start=3", "logger=none"]


def _signal_at(pipeline, monkeypatch, step: int, signum=signal.SIGTERM):
    """Make the module send `signum` to this process during step `step`, as SLURM or Ctrl+C would."""

    class SignalledAt(pipeline.ImageOptimization):
        def training_step(self, batch, batch_idx):
            if self.global_step == step:
                os.kill(os.getpid(), signum)
            return super().training_step(batch, batch_idx)

    monkeypatch.setattr(pipeline, "ImageOptimization", SignalledAt)


def _image(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["image_param.param"]


@pytest.mark.parametrize("param", [[], ["param=fourier", "optimizer=adam", "optimizer.lr=0.02"]], ids=["pixel", "fourier"])
def test_sigterm_then_resume_equals_an_uninterrupted_run(run_repinv, monkeypatch, param):
    import repinv.engine.pipeline as pipeline

    plain = pipeline.ImageOptimization
    whole, whole_dir = run_repinv(*RESUMABLE, *param, name="whole")
    assert [r["status"] for r in whole] == ["finished", "finished"]
    assert _image(whole_dir).shape == ((2, 3, 68, 35, 2) if param else (2, 3, 68, 68)), "the checkpoint holds the parameter"

    _signal_at(pipeline, monkeypatch, 13)
    with pytest.raises(SystemExit, match=f"^{128 + signal.SIGTERM}$") as stop:
        run_repinv(*RESUMABLE, *param, name="cut")
    cut_dir = whole_dir.parent / "cut"
    assert stop.value.code == 128 + signal.SIGTERM
    cut = read_metrics(cut_dir)
    assert [(r["status"], r["steps"]) for r in cut] == [("interrupted", 14)] * 2, "stops after the step in progress"
    assert all((cut_dir / r["png"]).is_file() for r in cut)
    ckpt = torch.load(cut_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 14 and "net.patch_embed.proj.weight" not in ckpt["state_dict"]

    monkeypatch.setattr(pipeline, "ImageOptimization", plain)
    resumed, _ = run_repinv(*RESUMABLE, *param, "resume=last", name="cut")  # in its own folder, as after a requeue
    assert [(r["status"], r["steps"]) for r in resumed] == [("finished", 30)] * 2
    assert [r["status"] for r in read_metrics(cut_dir)] == ["finished"] * 2
    assert torch.equal(_image(cut_dir), _image(whole_dir)), "resumed image differs from the uninterrupted one"
    for a, b in zip(whole, resumed):
        assert a["psnr"] == b["psnr"] and a["output_l2"] == b["output_l2"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR2], ids=["SIGINT", "SIGUSR2-requeue"])
def test_ctrl_c_and_a_launchers_requeue_signal_stop_with_results(run_repinv, monkeypatch, tmp_path, signum):
    """Ctrl+C exits 130; a signal a launcher already handles (submitit requeues on SIGUSR2) reaches
    that handler once the results and the checkpoint are written."""
    import repinv.engine.pipeline as pipeline

    run_dir, seen = tmp_path / "run", []

    def requeue(sig, frame):
        seen.append((sig, read_metrics(run_dir)[0]["status"], (run_dir / "checkpoints" / "last.ckpt").is_file()))

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        _signal_at(pipeline, monkeypatch, 2, signum)
        with pytest.raises(SystemExit, match=f"^{128 + signum}$") as stop:
            run_repinv("steps=30", "checkpoint_every=0", "logger=none")
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stop.value.code == 128 + signum
    assert [(r["status"], r["steps"]) for r in read_metrics(run_dir)] == [("interrupted", 3)] * 2
    assert (run_dir / "checkpoints" / "last.ckpt").is_file(), "checkpoint_every=0 still saves an interrupted run"
    assert seen == ([(signal.SIGUSR2, "interrupted", True)] if signum == signal.SIGUSR2 else [])


def test_a_signal_during_the_last_step_still_ends_the_process_after_the_finished_results(run_repinv, monkeypatch,
                                                                                          capsys, tmp_path):
    """Nothing is left to stop, but the signal is not lost: the finished results are written and the process exits
    128 + the signal (SLURM's SIGTERM ends the job; a study run in-process starts no next run)."""
    import repinv.engine.pipeline as pipeline

    _signal_at(pipeline, monkeypatch, 9)
    with pytest.raises(SystemExit, match=f"^{128 + signal.SIGTERM}$"):
        run_repinv("steps=10", "logger=none")
    assert [(r["status"], r["steps"]) for r in read_metrics(tmp_path / "run")] == [("finished", 10)] * 2
    err = capsys.readouterr().err
    assert "SIGTERM at step 10 of 10: results in" in err and "the run had finished" in err


def test_ctrl_c_while_a_resumed_run_starts_stops_it_after_a_step_from_its_checkpoint(run_repinv, monkeypatch, tmp_path):
    """Ctrl+C before the checkpoint's state is restored (the module's own start, the first step's timing) neither
    writes step 0's results over the run nor exits 1: the run takes one step from its checkpoint and stops there."""
    import repinv.engine.pipeline as pipeline

    plain = pipeline.ImageOptimization
    _signal_at(pipeline, monkeypatch, 4)
    with pytest.raises(SystemExit, match=f"^{128 + signal.SIGTERM}$"):
        run_repinv("steps=10", "logger=none")

    class SignalledAtStart(plain):
        def on_fit_start(self):
            os.kill(os.getpid(), signal.SIGINT)
            super().on_fit_start()

    monkeypatch.setattr(pipeline, "ImageOptimization", SignalledAtStart)
    with pytest.raises(SystemExit, match=f"^{128 + signal.SIGINT}$"):
        run_repinv("steps=10", "logger=none", "resume=last")
    assert [(r["status"], r["steps"]) for r in read_metrics(tmp_path / "run")] == [("interrupted", 6)] * 2
    assert torch.load(last_checkpoint(tmp_path / "run"), weights_only=True)["global_step"] == 6


@pytest.mark.parametrize("step, status", [(4, "interrupted"), (9, "finished")])
def test_a_second_signal_stops_at_once_with_the_signals_exit_and_the_runs_status(run_repinv, monkeypatch, capsys,
                                                                               tmp_path, step, status):
    """The second SIGTERM raises in the step (or while the finished results are written): the results say how far
    the run got, and the process exits 143 with where to continue, as after one signal."""
    import repinv.engine.pipeline as pipeline
    import repinv.reporting.callbacks as callbacks

    class SignalledTwice(pipeline.ImageOptimization):
        def training_step(self, batch, batch_idx):
            if self.global_step == step:
                os.kill(os.getpid(), signal.SIGTERM)
                if step < 9:
                    os.kill(os.getpid(), signal.SIGTERM)
            return super().training_step(batch, batch_idx)

    written, calls = callbacks.write_results, []

    def signalled_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return written(*args, **kwargs)

    monkeypatch.setattr(pipeline, "ImageOptimization", SignalledTwice)
    monkeypatch.setattr(callbacks, "write_results", signalled_write if step == 9 else written)
    with pytest.raises(SystemExit, match=f"^{128 + signal.SIGTERM}$"):
        run_repinv("steps=10", "logger=none")
    steps = 10 if status == "finished" else step
    assert [(r["status"], r["steps"]) for r in read_metrics(tmp_path / "run")] == [(status, steps)] * 2
    assert f"SIGTERM at step {steps} of 10: results in" in capsys.readouterr().err


def test_a_run_resumed_into_a_new_folder_has_the_models_filters_there_too(run_repinv, monkeypatch, tmp_path):
    import repinv.engine.pipeline as pipeline

    plain = pipeline.ImageOptimization
    _signal_at(pipeline, monkeypatch, 4)
    with pytest.raises(SystemExit):
        run_repinv("steps=10", "logger=none", name="cut")
    monkeypatch.setattr(pipeline, "ImageOptimization", plain)
    run_repinv("steps=10", "logger=none", f"resume={tmp_path / 'cut'}", name="new")
    assert (tmp_path / "new" / "filters.png").is_file()
    assert (tmp_path / "new" / "filters.json").read_text() == (tmp_path / "cut" / "filters.json").read_text()


def test_a_run_that_fails_leaves_the_signal_handlers_as_it_found_them(run_repinv, monkeypatch):
    """A crashed run's handler left in place would catch the next run's Ctrl+C (a notebook, a study in one process)."""
    import repinv.engine.pipeline as pipeline

    class FailsAtStep2(pipeline.ImageOptimization):
        def training_step(self, batch, batch_idx):
            if self.global_step == 2:
                raise RuntimeError("a crash in the step")
            return super().training_step(batch, batch_idx)

    monkeypatch.setattr(pipeline, "ImageOptimization", FailsAtStep2)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(RuntimeError, match="a crash in the step"):
        run_repinv("steps=5", "logger=none")
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} == before


def test_a_failure_after_the_finished_results_were_written_leaves_them_finished(run_repinv, monkeypatch, tmp_path):
    """Every step ran and the results were written, then the final checkpoint fails (a full disk): the error ends the
    run, and metrics.json still says finished."""
    from repinv.reporting.callbacks import Checkpoints

    def full_disk(self, trainer):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Checkpoints, "save", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        run_repinv("steps=3", "checkpoint_every=5", "logger=none")
    records = read_metrics(tmp_path / "run")
    assert [(r["status"], r["steps"]) for r in records] == [("finished", 3)] * 2
    assert all((tmp_path / "run" / r["png"]).is_file() for r in records)


def test_same_seed_same_result(run_repinv):
    _, first = run_repinv(*RESUMABLE, "steps=12", name="first")
    _, second = run_repinv(*RESUMABLE, "steps=12", name="second")
    _, other = run_repinv(*RESUMABLE, "steps=12", "seed=1", name="other")
    assert torch.equal(_image(first), _image(second))
    timeless = [[{k: v for k, v in r.items() if k != "seconds_per_step"} for r in read_metrics(d)] for d in (first, second)]
    assert timeless[0] == timeless[1]
    assert not torch.equal(_image(first), _image(other)), "another seed must give another image"


def test_a_finished_or_different_run_is_not_resumed(run_repinv):
    from repinv.errors import RepinvError

    _, done = run_repinv(*RESUMABLE, "steps=4", name="done")
    with pytest.raises(RepinvError, match="already finished its 4 steps"):
        run_repinv(*RESUMABLE, "steps=4", f"resume={done}", name="again")
    with pytest.raises(RepinvError, match="steps: 4 there, 8 here"):
        run_repinv(*RESUMABLE, "steps=8", f"resume={done}", name="longer")
    with pytest.raises(RepinvError, match="targets"):
        run_repinv(*RESUMABLE, "steps=4", "layers=[1]", f"resume={done}", name="other-layer")
    (done / "broken.ckpt").write_bytes(b"half a checkpoint")
    with pytest.raises(RepinvError, match="could not be read as a checkpoint"):
        run_repinv(*RESUMABLE, "steps=4", f"resume={done}/broken.ckpt", name="broken")


def test_a_diverging_target_keeps_its_last_finite_image_and_the_others_go_on(run_repinv, monkeypatch):
    import repinv.engine.pipeline as pipeline

    class Poisoned(pipeline.ImageOptimization):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            if self.global_step == 13:  # after step 12: target 0's image turns NaN
                self.canvas.image.data[0] = float("nan")
            return out

    monkeypatch.setattr(pipeline, "ImageOptimization", Poisoned)
    records, out = run_repinv("steps=30", "log_every=5", "logger=csv")
    with open(out / "csv" / "metrics.csv") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    bad, good = read_metrics(out)
    assert bad["diverged"] is True and good["diverged"] is False
    assert bad["status"] == good["status"] == "finished"
    key = f"{bad['image']}/{bad['layer']}"
    # its image is the last one checked finite (step 10), with that step's metrics
    assert bad["psnr"] == pytest.approx(float(rows[10][f"psnr/{key}"]), rel=1e-5)
    assert all(math.isfinite(bad[k]) for k in ("psnr", "ssim", "output_l2", "loss"))
    png = np.asarray(Image.open(out / bad["png"]))
    assert png.std() > 5, "the diverged target's PNG must show its last finite image"
    key = f"{good['image']}/{good['layer']}"
    assert good["psnr"] > float(rows[10][f"psnr/{key}"]) + 1, "the other target must go on improving"
    assert math.isfinite(float(rows[25]["loss"])), "the run's total loss leaves the diverged target out"
    # the row of the step that caught it shows the image that step saw, beside the loss that image gave
    caught = rows[15]
    assert math.isnan(float(caught[f"psnr/{bad['image']}/{bad['layer']}"]))
    assert math.isnan(float(caught[f"loss/{bad['image']}/{bad['layer']}"]))


def test_requeued_job_resumes_from_its_own_folder(tmp_path, monkeypatch):
    from repinv.engine.pipeline import resume_path
    from repinv.errors import RepinvError

    own = tmp_path / "checkpoints" / "last.ckpt"
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert resume_path(None, tmp_path) is None
    own.parent.mkdir()
    own.write_bytes(b"")
    assert resume_path(None, tmp_path) is None, "a first start never picks up a checkpoint by itself"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resume_path(None, tmp_path) == own
    assert resume_path("last", tmp_path) == resume_path(str(tmp_path), tmp_path) == resume_path(str(own), tmp_path) == own
    with pytest.raises(RepinvError, match="does not exist"):
        resume_path(str(tmp_path / "elsewhere"), tmp_path)


def test_slurm_launcher_requeues_on_time_limit():
    import yaml

    slurm = yaml.safe_load((REPO / "src" / "repinv" / "conf" / "hydra" / "launcher" / "slurm.yaml").read_text())
    assert slurm["max_num_timeout"] > 0 and slurm["signal_delay_s"] > 0


@pytest.mark.slow
def test_sigterm_to_the_cli_leaves_results_and_a_checkpoint_then_resume_finishes(run_repinv, tmp_path):
    """The real command: SIGTERM mid-run exits 143 without a traceback, and the run can be continued."""
    run_dir = tmp_path / "killed"
    args = [*TINY, "steps=60", "checkpoint_every=2", "logger=csv"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "repinv", *args, f"hydra.run.dir={run_dir}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "SIGTERM at step" in err
    records = read_metrics(run_dir)
    assert all(r["status"] == "interrupted" and 2 <= r["steps"] < 60 for r in records)
    assert all((run_dir / r["png"]).is_file() for r in records) and (run_dir / "grid.png").is_file()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == records[0]["steps"]
    resumed, _ = run_repinv("steps=60", "checkpoint_every=2", "logger=none", f"resume={run_dir}", name="resumed")
    assert all(r["status"] == "finished" and r["steps"] == 60 for r in resumed)


def test_a_run_resumed_to_its_end_without_periodic_checkpoints_leaves_no_older_checkpoint(run_repinv, monkeypatch,
                                                                                          tmp_path):
    """checkpoint_every=0 still saves the interrupted run; once resumed to its end, the checkpoint is the finished
    run's, so resume=auto keeps the results and a new run in the folder is not refused as unfinished."""
    import repinv.engine.pipeline as pipeline

    plain = pipeline.ImageOptimization
    _signal_at(pipeline, monkeypatch, 2)
    with pytest.raises(SystemExit):
        run_repinv("steps=10", "checkpoint_every=0", "logger=none")
    monkeypatch.setattr(pipeline, "ImageOptimization", plain)
    records, run_dir = run_repinv("steps=10", "checkpoint_every=0", "logger=none", "resume=last")
    assert {(r["status"], r["steps"]) for r in records} == {("finished", 10)}
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
