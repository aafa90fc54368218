"""CUDA: runs on the GPU match the CPU's, resume exactly, survive divergence, and run every
parametrisation and prior (run by scripts/gpu_check.sh); and the script's CPU-only paths.

Tolerances: in fp32 (matmul_precision=highest: no TF32 in matmuls or cuDNN) a GPU and a CPU
differ only in the order their kernels sum, a relative 1e-6 per operation; after 5 steps of
ViT-B/32 the final output distance agrees to 1e-3 relative and PSNR to 0.01 dB. bf16 steps
(8-bit mantissa) reach the fp32 result within 0.5 dB.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO, read_metrics

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
needs_two = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
GPU = ["trainer.accelerator=gpu", "trainer.devices=1", "logger=none"]
VIT_B32 = ["model=vit_b_32", "layers=[0,5]", "image=[chelsea,astronaut]", "steps=5", "log_every=4", "image_every=100"]
RESUMABLE = ["steps=30", "log_every=5", "checkpoint_every=10", "priors=blur_jitter",
             "priors.jitter.pixels=4", "priors.jitter.start=3"]


@pytest.mark.gpu
@needs_cuda
def test_vit_b32_on_cuda_equals_the_cpu_run_in_fp32(run_repinv):
    cpu, _ = run_repinv(*VIT_B32, "trainer.accelerator=cpu", "logger=none", tiny=False, name="cpu")
    gpu, _ = run_repinv(*VIT_B32, *GPU, tiny=False, name="gpu")
    for a, b in zip(cpu, gpu):
        assert b["status"] == "finished" and (a["image"], a["layer"]) == (b["image"], b["layer"])
        assert b["psnr"] == pytest.approx(a["psnr"], abs=0.01), a["layer"]
        assert b["output_l2"] == pytest.approx(a["output_l2"], rel=1e-3), a["layer"]


@pytest.mark.gpu
@needs_cuda
def test_bf16_steps_on_cuda_reach_the_fp32_result(run_repinv):
    common = ["model=vit_b_32", "layers=[0,5]", "steps=30", "log_every=10", "image_every=100", *GPU]
    fp32, _ = run_repinv(*common, tiny=False, name="fp32")
    bf16, _ = run_repinv(*common, "precision=bf16", tiny=False, name="bf16")
    for a, b in zip(fp32, bf16):
        assert b["status"] == "finished" and math.isfinite(b["psnr"])
        assert b["psnr"] == pytest.approx(a["psnr"], abs=0.5), a["layer"]


def _image(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)["state_dict"]["image_param.param"]


def _module_that(pipeline, monkeypatch, actions):
    """Runs use a module that calls `actions[k](module)` at the end of the step after which k steps are done."""

    class Acting(pipeline.ImageOptimization):
        def training_step(self, batch, batch_idx):
            super().training_step(batch, batch_idx)
            if self.global_step in actions:
                actions[self.global_step](self)

    monkeypatch.setattr(pipeline, "ImageOptimization", Acting)


def _stop(module):
    os.kill(os.getpid(), signal.SIGTERM)


def _poison(module):
    module.canvas.image.data[0] = float("nan")


@pytest.mark.gpu
@needs_cuda
def test_a_resumed_run_on_cuda_is_bit_identical(run_repinv, monkeypatch):
    import repinv.engine.pipeline as pipeline

    plain = pipeline.ImageOptimization
    whole, whole_dir = run_repinv(*RESUMABLE, *GPU, name="whole")
    _module_that(pipeline, monkeypatch, {14: _stop})
    with pytest.raises(SystemExit):
        run_repinv(*RESUMABLE, *GPU, name="cut")
    cut_dir = whole_dir.parent / "cut"
    assert [(r["status"], r["steps"]) for r in read_metrics(cut_dir)] == [("interrupted", 14)] * 2
    monkeypatch.setattr(pipeline, "ImageOptimization", plain)
    resumed, _ = run_repinv(*RESUMABLE, *GPU, "resume=last", name="cut")
    assert [(r["status"], r["steps"]) for r in resumed] == [("finished", 30)] * 2
    assert torch.equal(_image(cut_dir), _image(whole_dir)), "the resumed image differs from the uninterrupted one"
    for a, b in zip(whole, resumed):
        assert a["psnr"] == b["psnr"] and a["output_l2"] == b["output_l2"]


@pytest.mark.gpu
@needs_cuda
def test_a_target_diverges_on_cuda_then_the_run_resumes_with_it_stopped(run_repinv, monkeypatch):
    """Target 0 turns NaN after step 12 and stops at the log step; the run is stopped after step 18 and resumed on the GPU,
    where the restored divergence state (its last finite image) must be on the GPU too."""
    import repinv.engine.pipeline as pipeline

    _module_that(pipeline, monkeypatch, {13: _poison, 19: _stop})
    with pytest.raises(SystemExit):
        run_repinv(*RESUMABLE, *GPU, name="cut")
    monkeypatch.undo()
    resumed, out = run_repinv(*RESUMABLE, *GPU, "resume=last", name="cut")
    bad, good = resumed
    assert bad["diverged"] is True and good["diverged"] is False
    assert bad["status"] == good["status"] == "finished" and bad["steps"] == 30
    assert all(math.isfinite(bad[k]) for k in ("psnr", "output_l2", "loss"))
    assert math.isfinite(good["psnr"]) and good["psnr"] > bad["psnr"]


CASES = {
    "fourier": ["param=fourier", "optimizer=adam", "optimizer.lr=0.02"],
    "pyramid": ["param=pyramid"],
    "blur_jitter": ["priors=blur_jitter", "priors.jitter.pixels=4", "priors.jitter.start=2"],
    "octaves": ["priors=octaves", "priors.jitter.pixels=4"],
    "penalties": ["priors=penalties"],
    "transforms": ["priors=transforms", "priors.jitter.pixels=4"],
    "tv": ["priors=tv"],
    "class": ["objective=class", "classes=[1,2]", "priors.jitter.pixels=4", "priors.jitter.start=2"],
    "feature": ["objective=feature", "objective.units=[0,[1,2]]"],
    "16-mixed": ["precision=16-mixed"],
}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", CASES)
def test_every_parametrisation_prior_and_objective_runs_on_cuda(run_repinv, case):
    records, _ = run_repinv(*CASES[case], "steps=12", "log_every=5", *GPU, name=case)
    assert records and all(r["status"] == "finished" and math.isfinite(r["loss"]) for r in records)


@pytest.mark.gpu
@needs_two
def test_two_processes_on_two_gpus_equal_one(tmp_path):
    common = ["model=vit_tiny", "image=[chelsea,astronaut]", "layers=[0,patch_embed]", "steps=20", "logger=none",
              "trainer.accelerator=gpu", "collective_timeout_s=120"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = {}
    for devices in (1, 2):
        run_dir = tmp_path / f"d{devices}"
        res = subprocess.run([sys.executable, "-m", "repinv", *common, f"trainer.devices={devices}", f"hydra.run.dir={run_dir}"],
                             env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        out[devices] = read_metrics(run_dir)
    for a, b in zip(out[1], out[2]):
        assert (a["image"], a["layer"]) == (b["image"], b["layer"])
        assert b["psnr"] == pytest.approx(a["psnr"], abs=1e-4) and b["output_l2"] == pytest.approx(a["output_l2"], rel=1e-5)


def gpu_check(env: dict, timeout: int) -> subprocess.CompletedProcess:
    """scripts/gpu_check.sh run with `env`, its output captured."""
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_gpu_check_skips_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = gpu_check(env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "gpu_check: skipped (no CUDA device" in res.stdout


@pytest.mark.parametrize("setting, error", [
    ({"GPU_CHECK_STAGES": "tests studdy"},
     "GPU_CHECK_STAGES names 'studdy', which is not a stage; give some of: tests benchmark study"),
    ({"GPU_CHECK_BUDGET": "7min"}, "GPU_CHECK_BUDGET=7min is not a number of seconds of at least 60"),
])
def test_gpu_check_refuses_bad_settings_before_anything_runs(setting, error):
    res = gpu_check({**os.environ, **setting}, timeout=60)
    assert res.returncode == 2 and "skipped" not in res.stdout
    assert error in res.stderr


def stand_in_h200(tmp_path) -> dict:
    """gpu_check's environment on a CPU posing as one H200: a stand-in python reports one GPU and a stand-in
    nvidia-smi its name; only the study stage runs, with --jobs 0, which repinv-claims refuses at once, so the
    ledger stage reads only the runs the study folder was given. Results go to tmp_path/out."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text("#!/usr/bin/env bash\n"
                                    'if [ "$1" = -c ] && [[ "$2" == *device_count* ]]; then echo 1; exit 0; fi\n'
                                    f'exec {sys.executable} "$@"\n')
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'NVIDIA H200'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
            "OUT": str(tmp_path / "out"), "GPU_CHECK_STAGES": "study", "GPU_CHECK_JOBS": "0", "GPU_CHECK_BUDGET": "120"}


@pytest.mark.slow
def test_gpu_check_continues_the_committed_ledger_of_its_gpu_model(tmp_path):
    """On an H200 the study stage starts from docs/study/gpu-h200: its finished runs are reused and packed, and
    the ledger of them gives the committed verdicts. A stand-in python reports one GPU; --jobs 0 makes the study
    stage refuse at once, so the ledger stage reads only the committed runs."""
    import csv
    import tarfile

    out = tmp_path / "out"
    res = gpu_check(stand_in_h200(tmp_path), timeout=300)
    committed = REPO / "docs" / "study" / "gpu-h200"
    finished = sorted(p.parent.name for p in committed.glob("runs/*/command.txt"))
    page = (out / "summary.md").read_text()
    assert f"It continues docs/study/gpu-h200: {len(finished)} of those runs were finished there and reused." in page, res.stdout
    assert f"{len(finished)} runs finished in" in page and "| study | FAILED (exit 2) |" in page
    with tarfile.open(out / "study.tar.gz") as tar:
        names = tar.getnames()
        rows = csv.DictReader(tar.extractfile("study/claims.csv").read().decode().splitlines())
        ledger = {r["claim"]: r["verdict"] for r in rows}
    assert sorted(n.split("/")[2] for n in names if n.endswith("command.txt")) == finished
    assert len([n for n in names if n.endswith("metrics.json")]) == len(list(committed.glob("runs/*/metrics.json")))
    assert ledger == {r["claim"]: r["verdict"] for r in csv.DictReader((committed / "claims.csv").open())}
    assert "study/cost.json" in names and "The plan counts 63 PFLOP (cost.json" in page, "the plan's committed cost"


@pytest.mark.slow
def test_gpu_check_study_args_start_a_ledger_of_their_own(tmp_path):
    """Overrides for the study runs (another precision) never join the committed fp32 ledger: their own folder."""
    import tarfile

    res = gpu_check({**stand_in_h200(tmp_path), "GPU_CHECK_STUDY_ARGS": "precision=bf16"}, timeout=300)
    page = (tmp_path / "out" / "summary.md").read_text()
    assert "It continues" not in page and "0 runs finished in" in page, res.stdout
    assert "The plan counts 63 PFLOP" in page, "the same plan's FLOPs, from the committed GPU ledger"
    with tarfile.open(tmp_path / "out" / "study.tar.gz") as tar:
        made_with = tar.extractfile("study/claims.md").read().decode()
    assert "trainer.devices=1 checkpoint_every=250 precision=bf16` (the same command continues it" in made_with


def test_the_summary_reads_a_result_folder_and_says_what_is_missing(tmp_path):
    """scripts/gpu_summary.py on a fake result folder: stage outcomes, test counts, the benchmark table, the ledger."""
    sys.path.insert(0, str(REPO / "scripts"))
    import gpu_summary

    (tmp_path / "gpu.txt").write_text("1 x NVIDIA H200, torch 2.11 CUDA 13.0\n")
    (tmp_path / "stages.tsv").write_text("tests\t0\t80\ttests.log\nbenchmark\t1\t20\tbenchmark.log\nstudy\t124\t200\tstudy.log\n")
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite><testcase name="test_a"/><testcase name="test_b"><failure message="x"/></testcase>'
        '<testcase name="test_two"><skipped message="needs two GPUs"/></testcase></testsuite></testsuites>')
    rows = [{"variant": v, "layer": 5, "batch": 64, "seconds_per_step": s, "fraction_of_matmul_peak": f}
            for v, s, f in (("repinv", 0.02, 0.25), ("repinv_bf16", 0.01, 0.125), ("study", 0.05, 0.1), ("kernels", 0.015, 0.3))]
    (tmp_path / "benchmark.json").write_text(json.dumps({
        "rows": rows, "matmul_peak_gflops_by_precision": {"fp32": 50000.0, "bf16": 800000.0},
        "ratios": {"repinv_over_kernels": {"L5_b64": 1.333}},
        "shared_pass": {"depths": 13, "images": 3, "variants": {
            "32-true": {"seconds_per_step": 0.03, "seconds_for_1500_steps": 45.0, "peak_memory_mib": 2048},
            "32-true compiled": {"seconds_per_step": 0.01, "seconds_for_1500_steps": 15.0, "peak_memory_mib": 1024}},
            "aten_ops_per_step": 800, "kernel_ops_per_step": 600},
        "host_step": {"seconds_per_step": 0.004, "kernel_ops_per_step": 70},
        "vit_l16_512": {"32-true": {"seconds_per_step": 0.2, "peak_memory_mib": 9000}}}))
    (tmp_path / "study" / "runs" / "vit-seed0-abc").mkdir(parents=True)
    (tmp_path / "study" / "runs" / "vit-seed0-abc" / "command.txt").write_text("model=vit_b_32")
    (tmp_path / "study" / "claims.csv").write_text("claim,verdict,measured\nvit-keeps,holds,30.1 dB\n"
                                                   "mixer,pending,runs not made yet: rerun the same command to make them\n")
    (tmp_path / "study.seconds").write_text("212\n")
    (tmp_path / "study" / "cost.json").write_text(json.dumps([{"flops_per_step": 3e11, "steps": 45000},
                                                              {"flops_per_step": 1e12, "steps": 4500}]))
    assert gpu_summary.main([str(tmp_path)]) == 0
    page = (tmp_path / "summary.md").read_text()
    assert page.startswith("# gpu_check: 1 x NVIDIA H200")
    assert "| tests | ok | 80 |" in page and "| benchmark | FAILED (exit 1) | 20 |" in page
    assert "| study | timed out (cut off) | 200 |" in page
    assert "1 passed, 1 failed, 1 skipped of 3." in page and "- test_b: **failed**" in page
    assert "fp32 50.0 TFLOP/s, bf16 800.0 TFLOP/s" in page
    assert "| 5 | 64 | 20.0 | 25.0 | 10.0 | 12.5 | 1.33 | 50.0 |" in page
    assert "13 depths x 3 images, one shared pass, 32-true: 30.0 ms/step, 1,500 steps in 45 s, peak 2048 MiB" in page
    assert "one shared pass, 32-true compiled: 10.0 ms/step, 1,500 steps in 15 s" in page
    assert "one step of it dispatches 800 aten operators, 600 of them not views: 50.0 µs each" in page
    assert "a near-empty network's step (repinv's own cost a step, 70 kernels): 4.0 ms" in page
    assert "ViT-L/16 at 512x512" in page and "200.0 ms/step" in page
    assert ("1 runs finished in 212 s; verdicts: 1 holds, 1 pending." in page
            and "| mixer | pending | runs not made yet: rerun the same command to make them |" in page)
    assert ("The plan counts 18 PFLOP (cost.json, `repinv-claims --cost`); at this GPU's measured matmul ceiling "
            "it takes at least 6.0 min in fp32, 0.4 min in bf16.") in page, "1.8e16 FLOP at 5e13 and 8e14 FLOP/s"
    assert len(page.splitlines()) < 60, "one page"

    for name in ("benchmark.json", "tests.xml"):
        (tmp_path / name).unlink()
    page = gpu_summary.summary(tmp_path)
    assert "18 PFLOP (cost.json, `repinv-claims --cost`); no measured matmul ceiling" in page
    assert "No benchmark results (benchmark.json missing)." in page and "No test results (tests.xml missing)." in page


@pytest.mark.parametrize("args,needle", [
    ([], "the following arguments are required: folder"),
    (["{tmp}/missing"], "gpu_summary.py: error: {tmp}/missing is not a folder; give the result folder"),
    (["{tmp}/file"], "{tmp}/file is not a folder"),
])
def test_the_summary_refuses_a_missing_folder_in_one_paragraph(args, needle, tmp_path):
    (tmp_path / "file").write_text("")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_summary.py"), *(a.format(tmp=tmp_path) for a in args)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert needle.format(tmp=tmp_path) in " ".join(proc.stderr.split()) and not (tmp_path / "missing").exists()


def test_the_summary_help_describes_it_and_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_summary.py"), "--help"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "usage: gpu_summary.py" in proc.stdout and list(tmp_path.iterdir()) == []
