"""Runs on several processes keep their results: signals, checkpoints, resume, a crashed process; logged metrics."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from test_sweeps import repinv

from conftest import REPO, TINY, read_metrics
from repinv.priors import Prior
from repinv.reporting.results import PROCESS, merge_shares, write_share

# 4 targets (2 per process), jitter and blur: a resume that got the rows, step, schedule or RNG wrong ends elsewhere.
FOUR = ["model=vit_tiny", "image=[chelsea,astronaut]", "layers=[0,patch_embed]", "log_every=5",
        "regularizer=blur_jitter", "regularizer.jitter.pixels=4", "regularizer.jitter.start=3"]
TWO = ["trainer.devices=2", "trainer.accelerator=cpu"]


class OnRank(Prior):
    """Test prior: at step `step`, process `rank` sends itself `signum`, or raises when `signum` is 0."""

    def __init__(self, rank: int, step: int, signum: int = 0):
        self.rank, self.step, self.signum = rank, step, signum

    def update(self, img, step, total):
        rank = dist.get_rank() if dist.is_initialized() else 0
        if step != self.step or rank != self.rank:
            return
        if not self.signum:
            raise RuntimeError(f"test failure on rank {rank} at step {step}")
        os.kill(os.getpid(), self.signum)


class SlowStart(Prior):
    """Test prior: the second process (LOCAL_RANK=1) is built `seconds` late, as on a loaded machine."""

    def __init__(self, seconds: float):
        if os.environ.get("LOCAL_RANK") == "1":
            time.sleep(seconds)


class SlowAbort(pl.Callback):
    """Test callback: the second process takes 5 s before the callbacks after this one write its share."""

    def on_exception(self, trainer, pl_module, exception):
        if trainer.global_rank == 1:
            time.sleep(5)


# the result writer after SlowAbort: the second process writes its share 5 s after it stopped
SLOW_SECOND_SHARE = ["callbacks.result_writer=null", "+callbacks.slow._target_=test_multiprocess.SlowAbort",
                     "+callbacks.writer._target_=repinv.reporting.callbacks.ResultWriter",
                     "+callbacks.writer.out_dir=${output_dir}"]


def on_rank(rank: int, step: int, signum: int = 0) -> list[str]:
    node = "+regularizer.on_rank"
    return [f"{node}._target_=test_multiprocess.OnRank", f"{node}.rank={rank}", f"{node}.step={step}",
            f"{node}.signum={signum}"]


def _joined(text: str) -> str:
    """Printed text with its line wrapping undone."""
    return " ".join(text.split())


def _env_repinv(*args, timeout=300):
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    return repinv(*args, timeout=timeout)


def _ckpt(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_then_resume_equals_an_uninterrupted_run(run_repinv, tmp_path, monkeypatch):
    """SIGTERM to rank 1 at step 13: both processes stop after that step, metrics.json holds every target and the
    checkpoint the whole batch (Adam's state included); resumed on two processes, the run ends where an
    uninterrupted one does."""
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    args = [*FOUR, "optimizer=adam", "steps=30", "checkpoint_every=10", *on_rank(1, 13, signal.SIGTERM)]
    whole, whole_dir = run_repinv(*args, "logger=none", tiny=False, name="whole")  # one process: rank 1 never signals

    cut_dir = tmp_path / "cut"
    res = _env_repinv(*args, *TWO, "logger=csv", f"hydra.run.dir={cut_dir}")
    assert res.returncode == 128 + signal.SIGTERM, res.stderr[-3000:]
    cut = read_metrics(cut_dir)
    assert [(r["layer"], r["status"], r["steps"]) for r in cut] == [(r["layer"], "interrupted", 14) for r in whole]
    assert all((cut_dir / r["png"]).is_file() for r in cut)
    ckpt = _ckpt(cut_dir)
    assert ckpt["global_step"] == 14 and ckpt["state_dict"]["image_param.param"].shape[0] == 4, (
        "one checkpoint of the whole batch"
    )
    assert ckpt["optimizer_states"][0]["state"][0]["exp_avg"].shape == ckpt["state_dict"]["image_param.param"].shape

    res = _env_repinv(*args, *TWO, "logger=csv", "resume=last", f"hydra.run.dir={cut_dir}")
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = read_metrics(cut_dir)
    assert [(r["status"], r["steps"]) for r in resumed] == [("finished", 30)] * 4
    diff = (_ckpt(cut_dir)["state_dict"]["image_param.param"] - _ckpt(whole_dir)["state_dict"]["image_param.param"]).abs().max()
    assert diff < 1e-4, f"resumed image differs from the uninterrupted one by {diff}"
    for a, b in zip(whole, resumed):
        for key in ("psnr", "ssim", "output_l2", "loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["layer"], key)


@pytest.mark.slow
def test_a_crashed_process_stops_the_other_and_the_survivors_results_are_written(tmp_path, monkeypatch):
    """Rank 1 raises at step 5 of 2000: rank 0 gives up within collective_timeout_s, each process writes its share,
    and metrics.json says which targets crashed and which were stopped with it."""
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    run_dir = tmp_path / "crash"
    start = time.monotonic()
    res = _env_repinv(
        *FOUR,
        "steps=2000",
        "checkpoint_every=0",
        "logger=none",
        "collective_timeout_s=20",
        *on_rank(1, 5),
        *TWO,
        f"hydra.run.dir={run_dir}",
        timeout=240,
    )
    took = time.monotonic() - start
    assert res.returncode == 1, res.stderr[-3000:]
    assert took < 150, f"the run took {took:.0f} s with collective_timeout_s=20"
    # the crashed process's traceback, and the survivor's one paragraph
    assert res.stderr.count("Traceback") == 1 and "test failure on rank 1 at step 5" in res.stderr, res.stderr[-3000:]
    assert "repinv: error: process 0 of 2: a collective between the processes failed" in _joined(res.stderr)
    records = read_metrics(run_dir)
    assert [r[PROCESS] for r in records] == [0, 0, 1, 1]
    assert [r["status"] for r in records] == ["aborted", "aborted", "crashed", "crashed"], records
    assert all(5 <= r["steps"] <= 6 and r["psnr"] > 0 and (run_dir / r["png"]).is_file() for r in records)
    assert json.loads((run_dir / "metrics.rank0.json").read_text()) == records[:2]


@pytest.mark.slow
def test_a_crash_on_the_launching_process_leaves_the_others_results_in_metrics_json(tmp_path):
    """Rank 0 raises at step 5: rank 1 writes its share (5 s late) after rank 0 wrote metrics.json, and metrics.json
    holds it when the command returns."""
    run_dir = tmp_path / "crash0"
    # the output goes to files, not pipes: the command returns when the launching process ends, as in a shell
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        code = subprocess.run([sys.executable, "-m", "repinv", *FOUR, "steps=300", "checkpoint_every=0", "logger=none",
                               "collective_timeout_s=60", *on_rank(0, 5), *SLOW_SECOND_SHARE, *TWO,
                               f"hydra.run.dir={run_dir}"],
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])},
                              stdout=out, stderr=err, timeout=240).returncode
    records = read_metrics(run_dir)  # read the moment the command returned, as a script would
    stderr = (tmp_path / "err.txt").read_text()
    assert code == 1 and "test failure on rank 0 at step 5" in stderr, stderr[-3000:]
    assert "repinv: error: process 1 of 2: a collective between the processes failed" in _joined(stderr)
    assert [(r[PROCESS], r["status"]) for r in records] == [(0, "crashed"), (0, "crashed"), (1, "aborted"), (1, "aborted")]
    assert all(5 <= r["steps"] <= 6 and r["psnr"] > 0 and (run_dir / r["png"]).is_file() for r in records)


def test_processes_merging_their_shares_at_once_leave_every_share_in_metrics_json(tmp_path):
    """Two processes write their shares and merge at the same moment, many times over: metrics.json ends whole, with
    both shares, whichever merged last."""
    shares = [[{"image": "chelsea", "layer": "L0"}], [{"image": "astronaut", "layer": "L0"}]]
    image = torch.zeros(1, 3, 8, 8)

    def crash(folder: Path, rank: int, ready: threading.Barrier) -> None:
        ready.wait()
        write_share(folder, [{**shares[rank][0], "column": "L0", "status": "crashed", PROCESS: rank}], image, rank)
        merge_shares(folder, shares)

    with ThreadPoolExecutor(2) as pool:
        for attempt in range(100):
            folder = tmp_path / str(attempt)
            folder.mkdir()
            ready = threading.Barrier(2)
            for done in [pool.submit(crash, folder, rank, ready) for rank in (0, 1)]:
                done.result()
            assert [(r[PROCESS], r["status"]) for r in read_metrics(folder)] == [(0, "crashed"), (1, "crashed")], attempt


@pytest.mark.slow
def test_a_process_that_never_joins_leaves_each_target_written_once(tmp_path, monkeypatch):
    """Rank 1 starts after rank 0 gave up waiting for it, before the targets were shared out: each writes its own
    share of them when it gives up, metrics.json ends with both, and no target is written twice."""
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    run_dir = tmp_path / "late"
    res = _env_repinv(*FOUR, "steps=50", "checkpoint_every=0", "logger=none", "collective_timeout_s=3",
                      "+regularizer.slow._target_=test_multiprocess.SlowStart", "+regularizer.slow.seconds=12",
                      *TWO, f"hydra.run.dir={run_dir}", timeout=240)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert ("repinv: error: process 0 of 2: the run's processes did not all join within collective_timeout_s=3 s"
            in _joined(res.stderr)), res.stderr
    records = read_metrics(run_dir)
    assert [(r[PROCESS], r["status"]) for r in records] == [(0, "aborted")] * 2 + [(1, "aborted")] * 2
    assert sorted((r["image"], r["layer"]) for r in records) == [("astronaut", "L0"), ("astronaut", "patch_embed"),
                                                                 ("chelsea", "L0"), ("chelsea", "patch_embed")]


def _logged(out, step: int) -> dict:
    with open(out / "csv" / "metrics.csv") as f:
        return {k: float(v) for k, v in next(r for r in csv.DictReader(f) if int(r["step"]) == step).items() if v}


def test_log_steps_report_the_centred_view_in_fp32(run_repinv):
    """With jitter the step's crop is shifted, but the logged psnr is that of the centre crop; under bf16 the
    logged numbers are the fp32 ones, of the image rendered in fp32."""
    from repinv.inputs.images import load_images
    from repinv.metrics import psnr

    args = ["model=vit_tiny", "layers=[0]", "optimizer.lr=1.0", "log_every=5", "logger=csv"]
    _, out = run_repinv(
        *args,
        "steps=11",
        "regularizer=blur_jitter",
        "regularizer.jitter.pixels=8",
        "regularizer.jitter.start=0",
        tiny=False,
        name="jitter",
    )
    img = _ckpt(out)["state_dict"]["divergence.last_good"]  # the image the last log step (10) saw
    centre = img[:, :, 4:68, 4:68]
    shifted = max((img[:, :, y : y + 64, x : x + 64] for y in range(9) for x in range(9)), key=lambda v: (v - centre).abs().max())
    ref = load_images("chelsea", (64, 64))[0].pixels.unsqueeze(0)
    logged = _logged(out, 10)["psnr/chelsea/L0"]
    assert logged == pytest.approx(psnr(centre, ref).item(), abs=1e-4)
    assert abs(psnr(shifted, ref).item() - logged) > 1e-3

    for param in ("pixel", "fourier"):  # fourier: an image rendered from its parameter by matmuls
        _, fp32 = run_repinv(*args, "steps=1", f"param={param}", tiny=False, name=f"fp32-{param}")
        _, bf16 = run_repinv(*args, "steps=1", f"param={param}", "precision=bf16", tiny=False, name=f"bf16-{param}")
        a, b = _logged(fp32, 0), _logged(bf16, 0)
        for key in ("loss/chelsea/L0", "output_l2/chelsea/L0", "psnr/chelsea/L0", "ssim/chelsea/L0"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (param, key)


@pytest.mark.parametrize("overrides,needle", [
    (["trainer.devices=3"], "the run has 2 target(s) but 3 processes"),
    (["optimizer=lbfgs", "trainer.devices=2"], "optimizer=lbfgs with 2 processes"),
    (["trainer.devices=2", "trainer.strategy=ddp_fork"], "trainer.strategy=ddp_fork starts the processes by fork"),
])
def test_what_several_processes_cannot_run_is_one_paragraph_before_the_run_folder_is_written(cli, monkeypatch, overrides,
                                                                                            needle):
    """More processes than targets, L-BFGS (one history and line search over the whole batch) and a strategy whose
    launching process takes no part: refused in one paragraph, exit 2, with nothing of the run written."""
    import repinv.engine.pipeline as pipeline

    def fit(*args):
        raise AssertionError("the run started")

    monkeypatch.setattr(pipeline, "fit", fit)
    code, _, err, run_dir = cli(*TINY, "logger=csv", "trainer.accelerator=cpu", *overrides)
    assert code == 2 and err.count("repinv: error:") == 1 and "Traceback" not in err, err
    assert needle in _joined(err), err
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "csv").exists()


def test_collective_timeout_reaches_the_processes(tmp_path):
    from datetime import timedelta

    from conftest import compose_cfg
    from repinv.engine.pipeline import trainer_overrides, validate
    from repinv.errors import RepinvError

    cfg = compose_cfg([*TWO, "collective_timeout_s=20"], tmp_path)
    assert trainer_overrides(cfg)["strategy"]._timeout == timedelta(seconds=20)
    with pytest.raises(RepinvError, match="collective_timeout_s=0 must be a positive number"):
        validate(compose_cfg(["collective_timeout_s=0"], tmp_path))


def test_a_process_that_imports_a_test_module_leaves_no_temporary_folder(tmp_path):
    """The ranks above import this module (for `OnRank`) and may die without pytest's unconfigure hook: importing it
    makes no folder in the temporary directory."""
    env = {**os.environ, "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", "import test_multiprocess"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(tmp_path.glob("repinv-wandb-*"))


def test_the_launching_process_outlives_lightnings_observer_while_it_waits_for_the_others(monkeypatch):
    """After a failure the launching process waits for the processes it started, which end with an error code;
    Lightning's observer thread, which watches them, must not SIGKILL it (its exit code and error would be lost).
    A stand-in process plays the launching one, so the observer's kill would land there."""
    from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    from repinv.engine.sharding import ShardedDDP

    launching = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = [subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(1)"])]
    observer = _ChildProcessObserver(main_pid=launching.pid, child_processes=started, sleep_period=0)
    strategy = ShardedDDP(timeout_s=5)
    monkeypatch.setattr(ShardedDDP, "launcher", property(lambda self: type("Launcher", (), {"procs": started})()))
    try:
        strategy.await_started()
        assert started == [], "the processes left the list the observer watches"
        observer._run()
        assert launching.poll() is None, "the observer killed the launching process"
    finally:
        launching.kill()
        launching.wait()
