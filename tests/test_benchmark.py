"""The benchmark script runs in quick mode and writes every field; bf16 runs give valid results."""

from __future__ import annotations

import json
import math
import sys
import warnings

import pytest
import torch

from conftest import REPO
from repinv.models.packed import native_bf16

sys.path.insert(0, str(REPO / "scripts"))
import benchmark  # noqa: E402


@pytest.mark.slow
def test_quick_benchmark_writes_every_field(tmp_path):
    out = tmp_path / "bench.json"
    assert benchmark.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    variants = {(r["variant"], r["layer"], r["batch"]) for r in report["rows"]}
    assert variants == {(v, layer, b) for v in ("repinv", "repinv_bf16", "plain", "study") for layer in (0, 1, 3) for b in (1, 4)}
    for row in report["rows"]:
        for field in benchmark.FIELDS:
            assert field in row, field
        assert row["seconds_per_step"] > 0 and row["gflops_per_step"] > 0
        assert 0 < row["fraction_of_matmul_peak"] < 5
        assert row["precision"] == ("bf16" if row["variant"] == "repinv_bf16" else "fp32")
    assert report["matmul_peak_gflops"] > 0
    assert report["machine"]["cpu"] and report["machine"]["native_bf16"] is native_bf16()
    cells = {f"L{layer}_b{b}" for layer in (0, 1, 3) for b in (1, 4)}
    for key in ("study_over_repinv", "study_over_repinv_bf16", "bf16_speedup", "study_over_repinv_at_fp32_peak"):
        ratios = report["ratios"][key]
        assert set(ratios) == cells and all(math.isfinite(r) and r > 0 for r in ratios.values()), key
    for key in ("repinv_over_plain_batch1_mid_layer", "all_layers_one_run_over_separate_runs", "bf16_speedup_quality_run"):
        assert math.isfinite(report["ratios"][key]) and report["ratios"][key] > 0, key
    assert abs(report["ratios"]["bf16_psnr_minus_fp32"]) < 1.0, "bf16 steps end within 1 dB of fp32 from the same start"
    shared = report["shared_pass"]
    assert (shared["depths"], shared["images"], set(shared["variants"])) == (5, 3, {"32-true", "bf16-mixed"})
    for v in shared["variants"].values():
        assert v["seconds_per_step"] > 0 and v["seconds_for_1500_steps"] == pytest.approx(1500 * v["seconds_per_step"])
    assert 0 < shared["kernel_ops_per_step"] < shared["aten_ops_per_step"]
    host = report["host_step"]
    assert 0 < host["seconds_per_step"] < shared["variants"]["32-true"]["seconds_per_step"], "less work than a real step"
    assert 0 < host["kernel_ops_per_step"] < shared["kernel_ops_per_step"]
    choices = report["cpu_choices"]
    assert set(choices) == {"size", "batch_1", "batch_12"}
    for name in ("patch_embedding_as_matmul", "ssim_channels_last"):
        for batch in ("batch_1", "batch_12"):
            c = choices[batch][name]
            assert c["repinv_seconds"] > 0 and c["speedup"] == pytest.approx(c["torch_seconds"] / c["repinv_seconds"])
            assert c["max_relative_difference"] < 1e-4, f"{name}: repinv's way gives torch's values"


def test_the_timed_loops_blur_on_the_study_schedule(monkeypatch):
    """The plain and study loops make steps + 1 steps (a warm-up first); their blur goes from 2.4 to 0.4 over them and
    never past it (past it, at the CPU default of 6 steps, sigma reached 0 and the blur divided by zero)."""
    sigmas = []

    class Recorded(benchmark.GaussianBlur):
        def update(self, img, step, total):
            sigmas.append(self.sigma(step, total))
            super().update(img, step, total)

    monkeypatch.setattr(benchmark, "GaussianBlur", Recorded)
    kwargs = dict(img_size=32, patch_size=16, depth=1, embed_dim=8, num_heads=1)
    loaded = benchmark.create_model("vit_tiny_patch16_224", input_size=32, kwargs=kwargs)
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    tap = benchmark.resolve_layer(loaded.net, 0)
    pix = torch.rand(1, 3, 32, 32)
    benchmark.plain_step(loaded.net, mean, std, tap, tap(loaded.net, pix), 1, 6, (32, 32))
    benchmark.study_step(benchmark.study_net("vit_tiny_patch16_224", kwargs), mean, std, 0, pix, 6, (32, 32))
    schedule = [2.4 - 2.0 * s / 6 for s in range(7)]
    assert sigmas == pytest.approx(schedule + schedule)


@pytest.mark.slow
def test_benchmark_without_bf16_says_so_and_keeps_the_fp32_ratios(tmp_path):
    """--no-bf16 leaves bf16 out everywhere; --compile adds the compiled shared pass and the compile speed-up."""
    out = tmp_path / "bench.json"
    assert benchmark.main(["--quick", "--no-bf16", "--compile", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {r["variant"] for r in report["rows"]} == {"repinv", "plain", "study"}
    assert "native bfloat16" in report["bf16_skipped"]
    assert not {"bf16_speedup", "study_over_repinv_bf16", "bf16_speedup_quality_run"} & set(report["ratios"])
    assert all(r > 0 for r in report["ratios"]["study_over_repinv"].values())
    assert set(report["shared_pass"]["variants"]) == {"32-true", "32-true compiled"}
    assert report["ratios"]["compile_speedup"] > 0


def test_a_benchmark_stopped_after_the_shared_pass_keeps_it(tmp_path, monkeypatch):
    """--out is written after each part: a run killed in the grid (a GPU check's time limit) keeps the shared pass."""
    def stopped(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark, "time_grid", stopped)
    out = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(["--quick", "--no-bf16", "--steps", "2", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["rows"] == [] and report["machine"]["cpu"]
    assert report["shared_pass"]["variants"]["32-true"]["seconds_per_step"] > 0


def test_bf16_run_gives_valid_results(run_repinv, monkeypatch):
    """precision=bf16 steps through a bfloat16 copy of the weights (attention unfused on CPU); the run's own network stays fp32.

    On a CPU without native bf16 the run says once that it will be slower; an fp32 run there says nothing.
    """
    from repinv.engine import module as module_lib, precision as precision_lib

    seen = {}
    original = module_lib.ImageOptimization.on_fit_start

    def fused(net):
        return [m.fused_attn for m in net.modules() if hasattr(m, "fused_attn")]

    def spy(self):
        before = {k: v.clone() for k, v in self.net.state_dict().items()}
        fused_before = fused(self.net)
        original(self)
        seen.update(step=next(self.stepper.net.parameters()).dtype, net=next(self.net.parameters()).dtype, before=before,
                    module=self, fused_before=fused_before, fused_step=fused(self.stepper.net), fused_net=fused(self.net))

    monkeypatch.setattr(module_lib.ImageOptimization, "on_fit_start", spy)
    monkeypatch.setattr(precision_lib, "native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without native bfloat16") as bf16_warnings:
        records, _ = run_repinv("precision=bf16", "logger=none")
    assert sum(precision_lib.BF16_EMULATED == str(w.message) for w in bf16_warnings) == 1
    assert seen["step"] == torch.bfloat16 and seen["net"] == torch.float32
    assert seen["fused_step"] and not any(seen["fused_step"]) and seen["fused_net"] == seen["fused_before"]
    assert all(torch.equal(v, seen["before"][k]) for k, v in seen["module"].net.state_dict().items())
    monkeypatch.undo()
    monkeypatch.setattr(precision_lib, "native_bf16", lambda: False)
    with warnings.catch_warnings(record=True) as fp32_warnings:
        warnings.simplefilter("always")
        fp32, _ = run_repinv("logger=none", name="fp32")
    assert not [w for w in fp32_warnings if "native bfloat16" in str(w.message)]
    for bf, fp in zip(records, fp32):
        assert math.isfinite(bf["psnr"]) and bf["psnr"] > 15
        assert abs(bf["psnr"] - fp["psnr"]) < 0.5


def test_compile_run_gives_the_eager_result(run_repinv):
    """compile=true compiles the step's forward and ends where the eager run ends."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    common = ("layers=[0]", "steps=8", "log_every=7", "logger=none")
    compiled, _ = run_repinv("compile=true", *common)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    eager, _ = run_repinv(*common, name="eager")
    for c, e in zip(compiled, eager):
        assert c["psnr"] > 10 and c["psnr"] == pytest.approx(e["psnr"], abs=0.05)
        assert c["output_l2"] == pytest.approx(e["output_l2"], rel=1e-2)


@pytest.mark.parametrize("flag", ["--steps", "--rounds"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_count_below_one_is_refused_before_anything_is_timed(flag, value, capsys):
    """--steps -1 crashed with an AttributeError and --steps 0 ran the default: both are one line and exit 2."""
    with pytest.raises(SystemExit) as stop:
        benchmark.main(["--quick", flag, value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flag}: {value} is not a number of" in err and "Traceback" not in err, err
