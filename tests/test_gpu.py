"""CUDA: the same run on the GPU as on the CPU, and bf16 steps there (run by scripts/gpu_check.sh); its CPU-only path."""

from __future__ import annotations

import math
import os
import subprocess

import pytest
import torch

from conftest import REPO

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SHORT = ["steps=20", "logger=none"]


@pytest.mark.gpu
@needs_cuda
def test_a_run_on_cuda_equals_the_cpu_run(run_repinv):
    cpu, _ = run_repinv(*SHORT, "trainer.accelerator=cpu", name="cpu")
    gpu, _ = run_repinv(*SHORT, "trainer.accelerator=gpu", "trainer.devices=1", name="gpu")
    for a, b in zip(cpu, gpu):
        assert b["psnr"] == pytest.approx(a["psnr"], abs=0.02), a["layer"]
        assert b["output_l2"] == pytest.approx(a["output_l2"], rel=1e-3), a["layer"]


@pytest.mark.gpu
@needs_cuda
def test_bf16_steps_on_cuda_reach_the_fp32_result(run_repinv):
    fp32, _ = run_repinv(*SHORT, "trainer.accelerator=gpu", "trainer.devices=1", name="fp32")
    bf16, _ = run_repinv(*SHORT, "trainer.accelerator=gpu", "trainer.devices=1", "precision=bf16", name="bf16")
    for a, b in zip(fp32, bf16):
        assert b["status"] == "finished" and math.isfinite(b["psnr"])
        assert b["psnr"] == pytest.approx(a["psnr"], abs=0.5), a["layer"]


def test_gpu_check_skips_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "gpu_check: skipped (no CUDA device" in res.stdout
