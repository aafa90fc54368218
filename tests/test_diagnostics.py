"""Layer diagnostics: spectra of layers whose Jacobian is known, non-uniqueness, the entry point and the script."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict
from torch import nn

import wandb_reader
from conftest import REPO
from repinv.cli import CONFIG_DIR
from repinv.diagnostics.nonunique import pairwise
from repinv.diagnostics.run import diagnose
from repinv.diagnostics.spectrum import SpectrumSettings, spectrum
from repinv.diagnostics.table import read_table
from repinv.errors import RepinvError
from repinv.models import LoadedModel
from repinv.reporting.results import read_records

SHAPE = (3, 4, 4)  # n = 48 inputs
N = 48


def _linear(a: torch.Tensor):
    """The layer x ↦ A x on flattened images: its Jacobian is A everywhere."""
    return lambda x: x.flatten(1) @ a.T.to(x)


def _known(n_out: int, n_in: int, sigma: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A matrix U diag(sigma) Vᵀ with random orthogonal U, V."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(n_out, n_out, generator=gen, dtype=torch.float64)).Q[:, : len(sigma)]
    v = torch.linalg.qr(torch.randn(n_in, n_in, generator=gen, dtype=torch.float64)).Q[:, : len(sigma)]
    return u @ torch.diag(sigma) @ v.T


X0 = torch.rand(1, *SHAPE)


def test_singular_values_match_the_exact_ones():
    a = _known(40, N, 0.9 ** torch.arange(40, dtype=torch.float64)).float()
    exact = torch.linalg.svdvals(a.double())
    got = spectrum(_linear(a), X0, SpectrumSettings(top_k=8, oversample=8, power_iters=3, lanczos_steps=40, small_k=3))
    assert got["n_in"] == N and got["n_out"] == 40 and got["completeness"] == "under-complete" and got["null_dim_min"] == 8
    torch.testing.assert_close(torch.tensor(got["sigma_top"], dtype=torch.float64), exact[:8], rtol=1e-3, atol=0)
    # Lanczos with as many steps as the Gram matrix has dimensions finds the small end exactly
    torch.testing.assert_close(torch.tensor(got["sigma_small"], dtype=torch.float64), exact.flip(0)[:3], rtol=1e-3, atol=0)
    assert got["condition"] == pytest.approx(float(exact[0] / exact[-1]), rel=1e-3)


def test_top_singular_values_of_a_flat_spectrum_are_within_one_percent_by_default():
    """512 singular values falling slowly from 1 to 0.6, as those of a ViT's patch embedding and first blocks do: the
    default basis (16 + 16 probes, 6 Krylov iterations: 224 of 512 directions) finds the top 16 within 1%, each from
    below, and the largest agrees with sigma_max (Lanczos)."""
    a = _known(512, 640, 1 - 0.4 * torch.arange(512, dtype=torch.float64) / 512).float()
    exact = torch.linalg.svdvals(a.double())[:16]
    got = spectrum(_linear(a), torch.rand(1, 640), SpectrumSettings())
    top = torch.tensor(got["sigma_top"], dtype=torch.float64)
    assert float(((exact - top) / exact).max()) < 0.01 and bool((top <= exact * (1 + 1e-5)).all())
    assert got["sigma_top"][0] == pytest.approx(got["sigma_max"], rel=0.01)


def test_orthogonal_layer_has_flat_spectrum_and_exact_stable_rank():
    q = _known(N, N, torch.ones(N, dtype=torch.float64), seed=1).float()
    got = spectrum(_linear(q), X0, SpectrumSettings(top_k=N, lanczos_steps=N))
    assert torch.allclose(torch.tensor(got["sigma_top"], dtype=torch.float64), torch.ones(N, dtype=torch.float64), rtol=1e-3)
    assert got["stable_rank"] == pytest.approx(N, rel=1e-3)


def test_attention_layer_spectrum_matches_its_exact_jacobian():
    """nn.MultiheadAttention (torchvision's ViT) in eval mode, frozen: its fused fast path has no forward-mode AD."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval().requires_grad_(False)

    def fn(x):
        tokens = x.view(-1, 6, 8)
        return mha(tokens, tokens, tokens, need_weights=False)[0]

    x0 = torch.randn(1, 48)
    exact = torch.linalg.svdvals(torch.autograd.functional.jacobian(lambda v: fn(v[None]).flatten(), x0[0]).double())
    got = spectrum(fn, x0, SpectrumSettings(top_k=48, lanczos_steps=48))
    torch.testing.assert_close(torch.tensor(got["sigma_top"], dtype=torch.float64)[:8], exact[:8], rtol=1e-3, atol=0)


def test_identity_layer_is_full_rank_with_condition_one():
    got = spectrum(lambda x: x, X0, SpectrumSettings(top_k=N, lanczos_steps=8))
    assert got["completeness"] == "complete" and got["null_dim_min"] == 0
    assert got["numerical_rank"] == N and not got["numerical_rank_is_lower_bound"]
    assert got["condition"] == pytest.approx(1.0, abs=1e-4)
    assert got["stable_rank"] == pytest.approx(N, rel=1e-4) and got["entropy_rank"] == pytest.approx(N, rel=1e-4)


def test_projection_reports_its_null_space():
    k = 12
    mask = torch.zeros(N)
    mask[torch.randperm(N, generator=torch.Generator().manual_seed(0))[:k]] = 1
    got = spectrum(lambda x: x.flatten(1) * mask, X0, SpectrumSettings(top_k=N, lanczos_steps=N))
    top = torch.tensor(got["sigma_top"], dtype=torch.float64)
    assert got["numerical_rank"] == k
    torch.testing.assert_close(top[:k], torch.ones(k, dtype=torch.float64), rtol=1e-4, atol=0)
    assert top[k:].abs().max() < 1e-5 and got["sigma_min_found"] < 1e-5
    assert got["stable_rank"] == pytest.approx(k, rel=1e-3)
    keep = spectrum(lambda x: x.flatten(1)[:, :k], X0, SpectrumSettings(top_k=k, lanczos_steps=k))
    assert keep["null_dim_min"] == N - k and keep["completeness"] == "under-complete"
    assert keep["condition"] == pytest.approx(1, abs=1e-4)


def test_norm_ablation_variants_of_mixer_and_resnet():
    from repinv.diagnostics.ablation import variants
    from repinv.models import create_model

    mixer = create_model("mixer_b16_224", input_size=32, kwargs={"img_size": 32, "num_blocks": 2, "embed_dim": 32}).net
    names = [v.name for v in variants(mixer, ["all", "each"])]
    assert names == ["as_configured", "no_layernorm", "no_blocks.0.norm1", "no_blocks.0.norm2", "no_blocks.1.norm1",
                     "no_blocks.1.norm2", "no_norm"]
    resnet = create_model("resnet18", input_size=32, kwargs={"layers": [1, 1, 1, 1], "channels": [8, 8, 8, 8]}).net
    assert [v.name for v in variants(resnet, ["all"])] == ["as_configured"]
    assert [v.name for v in variants(resnet, ["each"])][:3] == ["as_configured", "no_bn1", "no_layer1.0.bn1"]
    tv_vit = torchvision.models.vit_b_32(image_size=64)  # torchvision names its LayerNorms ln_1, ln_2, ln
    names = [v.name for v in variants(tv_vit, ["each"])]
    assert len(names) == 1 + 2 * 12 + 1
    assert names[1:3] == ["no_encoder.layers.encoder_layer_0.ln_1", "no_encoder.layers.encoder_layer_0.ln_2"]


def test_pairwise_of_equal_and_different_images():
    same = torch.rand(1, 3, 8, 8).repeat(3, 1, 1, 1)
    assert pairwise(same, [True] * 3)["nonunique_input_l2"] == 0 and pairwise(same, [True] * 3)["nonunique_psnr"] == 100
    apart = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8) * 0.1, torch.ones(3, 8, 8)])
    got = pairwise(apart, [True, True, False])  # the inaccurate third image is left out
    assert got["nonunique_pairs"] == 1 and got["nonunique_psnr"] == pytest.approx(20.0)
    assert got["nonunique_input_l2"] == pytest.approx(0.1 * math.sqrt(192)) and got["nonunique_accurate"] == 2


class Toy(nn.Module):
    """One fixed linear `layer` on 16x16 images: an orthogonal mixing (invertible), a coordinate projection, or zero (a
    layer that keeps nothing); with `norm`, a LayerNorm after it (a variant without it is then diagnosed too)."""

    def __init__(self, kind: str, norm: bool = False):
        super().__init__()
        n = 3 * 16 * 16
        gen = torch.Generator().manual_seed(0)
        if kind == "orthogonal":
            w = torch.linalg.qr(torch.randn(n, n, generator=gen)).Q
        elif kind == "zero":
            w = torch.zeros(n // 4, n)
        else:
            w = torch.eye(n)[torch.randperm(n, generator=gen)[: n // 4]]
        self.layer = nn.Linear(n, len(w), bias=False).requires_grad_(False)
        self.layer.weight.copy_(w)
        self.norm = nn.LayerNorm(len(w)) if norm else nn.Identity()

    def forward(self, x):
        return self.norm(self.layer(x.flatten(1)))


def toy_model(kind: str, seed: int = 0, norm: bool = False) -> LoadedModel:
    """A LoadedModel around `Toy`, built through a config's _target_ like any model."""
    return LoadedModel(Toy(kind, norm).eval(), f"toy_{kind}", "toy", (16, 16), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False)


def _diagnose_cfg(*overrides):
    """The diagnose config composed as `repinv-diagnose` would."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("diagnose", overrides=list(overrides))


def _toy_cfg(out, kind, *overrides, norm=False):
    """The diagnose config of the `Toy` layer (overrides after the defaults win)."""
    cfg = _diagnose_cfg("layers=[layer]", "logger=none", "priors=none", "optimizer.lr=0.2", "steps=200", "log_every=50",
                        "diagnostics.nonunique.seeds=3", "diagnostics.norm_ablation=[]", "diagnostics.top_k=4",
                        "diagnostics.lanczos_steps=2", *overrides, f"output_dir={out}")
    cfg.model = {"_target_": f"{__name__}.toy_model", "kind": kind, "seed": 0, "norm": norm}
    return cfg


def _toy_records(tmp_path, kind):
    return diagnose(_toy_cfg(tmp_path / kind, kind))


def test_nonuniqueness_is_zero_for_an_invertible_layer_and_large_for_a_projection(tmp_path):
    invertible, = _toy_records(tmp_path, "orthogonal")
    projection, = _toy_records(tmp_path, "projection")
    assert invertible["nonunique_accurate"] == projection["nonunique_accurate"] == 3
    assert invertible["nonunique_input_l2"] < 0.05 and invertible["nonunique_psnr"] > 45
    # three quarters of the pixels keep their N(0.7, 0.05) starting noise: 0.05·√2·√576 apart
    assert projection["nonunique_input_l2"] == pytest.approx(0.05 * math.sqrt(2 * 576), rel=0.15)
    assert projection["nonunique_psnr"] < 30
    assert projection["null_dim_min"] == 576 and invertible["null_dim_min"] == 0


def test_nonunique_null_measures_no_nonuniqueness(tmp_path):
    """diagnostics.nonunique=null is none, as diagnostics.norm_ablation=null is no ablation."""
    [record] = diagnose(_toy_cfg(tmp_path, "orthogonal", "diagnostics.nonunique=null"))
    assert "sigma_top" in record and "nonunique_psnr" not in record and not (tmp_path / "inversions").exists()


def test_an_infinite_condition_is_null_in_metrics_json(tmp_path):
    """A layer that keeps nothing (J = 0) has condition ∞: metrics.json is strict JSON with null there, as `repinv`
    writes non-finite numbers."""
    [record] = diagnose(_toy_cfg(tmp_path, "zero", "diagnostics.nonunique.seeds=0"))
    assert record["condition"] == math.inf and record["sigma_max"] == 0

    def refuse(name):
        raise ValueError(f"metrics.json holds {name}, which JSON does not allow")

    [written] = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert written["condition"] is None and written["sigma_max"] == 0


class SignalAt(pl.Callback):
    """Ctrl+C (SIGINT to this process) after step `step` of the inversion whose folder ends with `folder`; each
    inversion's first step is noted in `starts` as (variant/seed, step)."""

    starts: list[tuple[str, int]] = []

    def __init__(self, out_dir: str, folder: str = "", step: int = -1):
        self.out_dir, self.folder, self.step = out_dir, folder, step

    def on_train_start(self, trainer, pl_module):
        SignalAt.starts.append(("/".join(Path(self.out_dir).parts[-2:]), trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and self.out_dir.endswith(self.folder):
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_keeps_the_finished_variants_and_resume_last_continues_the_diagnosis(tmp_path, capsys):
    out = tmp_path / "diag"

    def cfg(*overrides, ctrl_c_at):
        c = _toy_cfg(out, "orthogonal", "steps=20", "log_every=10", "diagnostics.nonunique.seeds=2",
                     "diagnostics.norm_ablation=[all]", *overrides, norm=True)
        with open_dict(c):
            c.callbacks.ctrl_c = {"_target_": f"{__name__}.SignalAt", "out_dir": "${output_dir}",
                                  "folder": "no_layernorm/seed1", "step": ctrl_c_at}
        return c

    SignalAt.starts.clear()
    with pytest.raises(SystemExit) as stop:
        diagnose(cfg(ctrl_c_at=5))
    assert stop.value.code == 130
    assert f"resume=last hydra.run.dir={out}" in capsys.readouterr().err
    first = json.loads((out / "metrics.json").read_text())
    assert [(r["variant"], r["status"]) for r in first] == [("as_configured", "finished"), ("no_layernorm", "interrupted")]
    assert "nonunique_psnr" in first[0] and "sigma_top" in first[1] and "nonunique_psnr" not in first[1]
    with pytest.raises(RepinvError, match="holds an unfinished diagnosis"):
        diagnose(cfg(ctrl_c_at=-1))
    stopped_at = read_records(out / "inversions" / "no_layernorm" / "seed1")[0]["steps"]
    SignalAt.starts.clear()
    records = diagnose(cfg("resume=last", ctrl_c_at=-1))
    assert [(r["variant"], r["status"]) for r in records] == [("as_configured", "finished"), ("no_layernorm", "finished")]
    assert records[0] == first[0], "the finished variant is kept, not measured again"
    assert SignalAt.starts == [("no_layernorm/seed0", 0), ("no_layernorm/seed1", stopped_at)]
    assert json.loads((out / "metrics.json").read_text())[1]["nonunique_k"] == 2


@pytest.mark.parametrize("stop, code, status", [("SIGTERM", 143, "interrupted"), ("crash", None, "crashed")])
def test_a_diagnosis_stopped_or_crashed_keeps_the_finished_variants(stop, code, status, tmp_path, monkeypatch, capsys):
    from repinv.diagnostics import run

    measured = []

    def spectra(*args):
        if measured:  # the second variant
            if stop == "crash":
                raise RuntimeError("the layer broke")
            os.kill(os.getpid(), signal.SIGTERM)
            pytest.fail("SIGTERM did not stop the diagnosis")
        measured.append(True)
        return run_spectra(*args)

    run_spectra = run.spectra
    monkeypatch.setattr(run, "spectra", spectra)
    before = signal.signal(signal.SIGTERM, lambda *a: pytest.fail("SIGTERM reached the handler from before the diagnosis"))
    try:
        with pytest.raises(SystemExit if code else RuntimeError) as end:
            diagnose(_toy_cfg(tmp_path, "orthogonal", "diagnostics.nonunique.seeds=0", "diagnostics.norm_ablation=[all]",
                              norm=True))
    finally:
        signal.signal(signal.SIGTERM, before)
    assert code is None or end.value.code == code
    records = json.loads((tmp_path / "metrics.json").read_text())
    assert [(r["variant"], r["status"]) for r in records] == [("as_configured", "finished"), ("no_layernorm", status)]
    assert "sigma_top" in records[0] and "resume=last" in capsys.readouterr().err


def test_a_sweep_names_its_failed_jobs_exits_1_and_tables_its_own_jobs_only(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    args = ["-m", "model=vit_tiny", "layers=0", "diagnostics.nonunique.seeds=0", "diagnostics.norm_ablation=[]",
            "diagnostics.oversample=0", "diagnostics.power_iters=1", "diagnostics.lanczos_steps=2", "logger=none",
            f"hydra.sweep.dir={sweep}"]
    assert _diagnose_cli(monkeypatch, *args, "diagnostics.top_k=4,3") == 0
    capsys.readouterr()
    assert _diagnose_cli(monkeypatch, *args, "diagnostics.top_k=2,0") == 1
    assert "job 1 (diagnostics.top_k=0) failed: diagnostics.top_k=0 must be a whole number" in capsys.readouterr().out
    rows = read_table(sweep / "diagnostics.csv")  # not job 1's records of the earlier sweep, still in its folder
    assert [(r["job"], len(r["sigma_top"])) for r in rows] == [(0, 2)]


def test_a_sweep_whose_launcher_fails_ends_with_its_own_table_not_repinvs_summary(tmp_path, monkeypatch, capsys):
    from repinv.cli import end_broken_sweep
    from repinv.diagnostics.run import DiagnoseSweepEnd

    sweep = tmp_path / "sweep"
    assert _diagnose_cli(monkeypatch, "-m", "model=vit_tiny", "layers=0", "diagnostics.nonunique.seeds=0",
                         "diagnostics.norm_ablation=[]", "diagnostics.top_k=2", "diagnostics.oversample=0",
                         "diagnostics.power_iters=1", "diagnostics.lanczos_steps=2", "logger=none",
                         f"hydra.sweep.dir={sweep}") == 0
    (sweep / "diagnostics.csv").unlink()
    ended = DiagnoseSweepEnd()
    ended.sweep_dir = sweep  # as the sweep's start sets it
    end_broken_sweep(ended, RuntimeError("a job's process was killed"))
    assert [r["job"] for r in read_table(sweep / "diagnostics.csv")] == [0]
    assert not (sweep / "summary.csv").exists() and "its launcher failed" in " ".join(capsys.readouterr().err.split())


def test_bad_settings_are_one_paragraph_errors(tmp_path):
    for override, says in [("diagnostics.top_k=0", "top_k=0 must be a whole number"),
                           ("diagnostics.nonunique.seeds=1", "no pair to compare"),
                           ("diagnostics.norm_ablation=[eachh]", "Did you mean 'each'"),
                           ("diagnostics.norm_ablation=true", "norm_ablation=True is not a normalisation ablation"),
                           ("diagnostics.nonunique=3", "nonunique=3 must hold seeds and steps"),
                           ("metrics.psnr=null", "must hold psnr for the non-uniqueness diagnostic")]:
        cfg = _diagnose_cfg("model=vit_tiny", override, f"output_dir={tmp_path}")
        with pytest.raises(RepinvError, match=says) as err:
            diagnose(cfg)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, says", [
    (["seed=1.5", "diagnostics.nonunique.seeds=2"], "seed=1.5 must be a whole number"),
    (["seed=-1"], "seed=-1 must be a whole number from 0 to"),
    (["optimizer.lr=-1"], "optimizer.lr=-1 must be a positive number"),
    (["seed=4294967294", "diagnostics.nonunique.seeds=3"], "would seed inversions up to 4294967296"),
])
def test_settings_repinv_refuses_are_refused_before_any_work(overrides, says, tmp_path, monkeypatch):
    monkeypatch.setattr("repinv.diagnostics.run.build_model", lambda *a: pytest.fail("the model was built"))
    cfg = _diagnose_cfg("model=vit_tiny", *overrides, f"output_dir={tmp_path}")
    with pytest.raises(RepinvError, match=says) as err:
        diagnose(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("layers, says", [("[]", "layers= is empty"), ("[1,blocks.1]", "names layer blocks.1 more than once")])
def test_layers_repinv_refuses_are_refused(layers, says, tmp_path):
    cfg = _diagnose_cfg("model=vit_tiny", f"layers={layers}", "diagnostics.nonunique.seeds=0",
                        "diagnostics.norm_ablation=[]", f"output_dir={tmp_path}")
    with pytest.raises(RepinvError, match=says):
        diagnose(cfg)
    assert not (tmp_path / "metrics.json").exists()


FIELDS = ("model", "variant", "layer", "module", "depth", "image", "n_in", "n_out", "completeness", "null_dim_min",
          "sigma_top", "sigma_small", "sigma_max", "sigma_min_found", "condition", "stable_rank", "numerical_rank",
          "entropy_rank", "svd_seconds", "lanczos_seconds", "nonunique_psnr", "nonunique_input_l2", "nonunique_accurate",
          "inversion_psnr", "inversion_seconds")


def _diagnose_cli(monkeypatch, *args: str) -> int:
    """Run `repinv-diagnose ARGS` in-process; returns its exit code."""
    from repinv.diagnostics.run import main

    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["repinv-diagnose", *args])
    try:
        main()
    except SystemExit as exit:
        return exit.code
    return 0


def test_an_unknown_option_ends_repinv_diagnose_as_it_ends_repinv(tmp_path, monkeypatch, capsys):
    """Both commands share one entry shell: Hydra's refusal of the command line is one paragraph and exit 2."""
    code = _diagnose_cli(monkeypatch, "model=bogus", f"hydra.run.dir={tmp_path}")
    err = capsys.readouterr().err
    assert code == 2 and "repinv: error: model=bogus: there is no config 'bogus' in the group 'model'" in err
    assert "Traceback" not in err


def test_entry_point_writes_metrics_for_vit_tiny(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code = _diagnose_cli(monkeypatch, "model=vit_tiny", "layers=[patch_embed,1]", "steps=5", "diagnostics.nonunique.seeds=2",
                         "diagnostics.top_k=4", "diagnostics.oversample=2", "diagnostics.power_iters=1",
                         "diagnostics.lanczos_steps=3", f"hydra.run.dir={out}")
    assert code == 0
    records = json.loads((out / "metrics.json").read_text())
    assert [(r["variant"], r["layer"]) for r in records] == [
        ("as_configured", "patch_embed"), ("as_configured", "L1"), ("no_layernorm", "patch_embed"), ("no_layernorm", "L1")]
    for r in records:
        assert set(FIELDS) <= set(r), set(FIELDS) - set(r)
        tokens = 16 if r["layer"] == "patch_embed" else 17  # a block's output keeps the class token
        assert r["n_in"] == 3 * 64 * 64 and r["n_out"] == 64 * tokens and r["completeness"] == "under-complete"
        assert len(r["sigma_top"]) == 4 and r["sigma_max"] >= r["sigma_top"][0] > r["sigma_min_found"] > 0
        assert r["nonunique_k"] == 2 and r["nonunique_input_l2"] > 0
    first, deep, first_no_ln, deep_no_ln = records
    assert first_no_ln["sigma_top"] == pytest.approx(first["sigma_top"], rel=1e-5)  # the norms come after the patch embedding
    assert deep_no_ln["sigma_top"] != pytest.approx(deep["sigma_top"], rel=1e-2)
    assert (out / "config.yaml").is_file()
    runs = wandb_reader.find_runs(out)
    assert len(runs) == 1, "one offline W&B run in the run folder"
    by_step = {h["_step"]: h for h in wandb_reader.history(runs[0]) if "stable_rank/no_layernorm/chelsea" in h}
    assert sorted(by_step) == [0, 1]  # one row per layer, at its position in layers
    for r in records:
        assert by_step[r["depth"]][f"stable_rank/{r['variant']}/chelsea"] == pytest.approx(r["stable_rank"], rel=1e-6)
    capsys.readouterr()
    code = _diagnose_cli(monkeypatch, "model=vit_tiny", "diagnostics.power_iters=-1", f"hydra.run.dir={tmp_path / 'bad'}")
    err = capsys.readouterr().err
    assert code == 2 and "power_iters=-1 must be a whole number" in err and "Traceback" not in err
    assert "power_iters=-1" in (tmp_path / "bad" / "error.txt").read_text()


def _script():
    spec = importlib.util.spec_from_file_location("diagnostics_script", REPO / "scripts" / "diagnostics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_infinite_condition_read_back_as_null_is_the_highest_log_condition():
    read = _script().DIAGNOSTICS["log10_condition"][0]
    assert read({"condition": None}) == math.inf and read({"condition": 100.0}) == pytest.approx(2)


@pytest.mark.slow
def test_script_smoke_writes_table_correlations_and_plot(tmp_path, capsys):
    _script().main(["--smoke", "--out", str(tmp_path)])
    with open(tmp_path / "diagnostics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"vit_tiny", "resnet_tiny", "mixer_tiny"}
    assert {r["variant"] for r in rows if r["model"] == "mixer_tiny"} == {"as_configured", "no_layernorm"}
    assert all(float(r["inversion_psnr"]) > 0 and float(r["stable_rank"]) > 0 for r in rows)
    with open(tmp_path / "correlations.csv") as f:
        corr = {r["diagnostic"]: r for r in csv.DictReader(f)}
    assert {"stable_rank_fraction", "log10_condition", "nonunique_psnr"} <= set(corr)
    for r in corr.values():
        assert int(r["n"]) == len(rows) and float(r["seconds"]) > 0 and float(r["inversion_seconds"]) > 0
    assert all(-1 <= float(corr[d]["spearman"]) <= 1 for d in ("stable_rank_fraction", "null_fraction", "nonunique_psnr"))
    assert (tmp_path / "diagnostics.png").stat().st_size > 10_000
    assert "Spearman" in capsys.readouterr().out


@pytest.mark.parametrize("args, says", [
    (["--extra-steps", "0"], "argument --extra-steps: 0 is not a number of steps: give a whole number of at least 1"),
    (["--extra-steps", "-5"], "argument --extra-steps: -5 is not a number of steps"),
    (["--extra-seeds", "0"], "argument --extra-seeds: 0 is not a number of seeds: give a whole number of at least 1"),
    (["--extra-seeds", "1.5"], "argument --extra-seeds: 1.5 is not a number of seeds"),
])
def test_script_refuses_extra_seeds_or_steps_below_one_before_any_run(args, says, tmp_path, capsys, monkeypatch):
    from repinv import study

    monkeypatch.setattr(study, "execute", lambda *a, **k: pytest.fail("a run started before the arguments were checked"))
    with pytest.raises(SystemExit) as stop:
        _script().main(["--ledger", str(tmp_path / "ledger"), *args])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and says in err and "Traceback" not in err, err
    assert not (tmp_path / "ledger").exists()


def test_script_summarises_a_network_from_its_finished_runs_when_extra_seeds_failed(tmp_path, monkeypatch):
    from repinv.reporting.results import FINISHED
    from repinv.study import Run

    def run(status: str, seconds_per_step: float = 0.0) -> Run:
        records = [{"layer": "L0", "image": "chelsea", "psnr": 25.0, "accurate": True, "steps": 100,
                    "seconds_per_step": seconds_per_step}] if status == FINISHED else []
        return Run((), tmp_path, status, records)

    script = _script()
    monkeypatch.setattr(script, "spectrum_of", lambda base, root: [{"layer": "L0", "image": "chelsea"}])
    monkeypatch.setattr(script, "reconstruction", lambda run, record: torch.zeros(3, 4, 4))
    failed = run("run failed: the extra seed's inversion stopped")
    [row] = script.network_records("vit_b_32", [run(FINISHED, 0.2), failed], [run(FINISHED, 0.1), failed], tmp_path)
    assert row["inversion_seconds"] == pytest.approx(20.0) and row["nonunique_seconds"] == pytest.approx(10.0)
    assert row["nonunique_k"] == 2 and row["inversion_psnr"] == 25.0
    [alone] = script.network_records("vit_b_32", [run(FINISHED, 0.2)], [failed], tmp_path)
    assert alone["nonunique_pairs"] == 0 and alone["nonunique_seconds"] == 0


def test_ledger_spectrum_settings_find_the_top_of_a_flat_spectrum_within_one_percent():
    """`scripts/diagnostics.py --ledger` reads ViT-B/32's flat spectra with its own cheaper basis (top 8): it must still
    find them within 1% (a single Krylov iteration was 6.5% low)."""
    settings = {k.removeprefix("diagnostics."): int(v) for k, v in (o.split("=") for o in _script().LEDGER_SPECTRUM)
                if k in {f"diagnostics.{n}" for n in ("top_k", "oversample", "power_iters", "lanczos_steps", "small_k")}}
    a = _known(512, 640, 1 - 0.4 * torch.arange(512, dtype=torch.float64) / 512).float()
    exact = torch.linalg.svdvals(a.double())[:8]
    top = torch.tensor(spectrum(_linear(a), torch.rand(1, 640), SpectrumSettings(**settings))["sigma_top"],
                       dtype=torch.float64)
    assert len(top) == 8 and float(((exact - top) / exact).max()) < 0.01


def test_script_reuses_finished_ledger_spectra_and_continues_stopped_ones(tmp_path, monkeypatch):
    from repinv import study
    from repinv.study import Run

    script = _script()
    base = Run(("model=vit_tiny", "seed=0"), tmp_path)
    calls = []
    monkeypatch.setattr(script, "diagnose_with", lambda overrides: calls.append(overrides) or [{"layer": "L0"}])
    folder = tmp_path / "spectra" / study.folder_name(study.canonical([*base.overrides, *script.LEDGER_SPECTRUM]))
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("{}\n")
    (folder / "metrics.json").write_text(json.dumps([{"variant": "as_configured", "status": "interrupted"}]))
    script.spectrum_of(base, tmp_path)
    assert len(calls) == 1 and "resume=last" in calls[0], "a diagnosis stopped part way is continued, not read"
    (folder / "metrics.json").write_text(json.dumps([{"layer": "L0", "sigma_max": 1.5}]))  # a finished one, without status
    assert script.spectrum_of(base, tmp_path) == [{"layer": "L0", "sigma_max": 1.5}] and len(calls) == 1


def _row(model: str, depth: int, psnr: float) -> dict:
    """A diagnostics.csv row with every column the correlations and the plot read."""
    return {"model": model, "variant": "as_configured", "layer": f"L{depth}", "depth": depth, "image": "chelsea",
            "n_in": 100, "null_fraction": 0.1 * depth, "sigma_top": [2.0, 1.5], "condition": 10.0 ** depth,
            "stable_rank": 5.0 + depth, "entropy_rank": 3.0 - depth, "forward_seconds": 0.1, "svd_seconds": 1.0,
            "lanczos_seconds": 0.5, "nonunique_psnr": psnr + 1, "nonunique_input_l2": 9.0 - depth,
            "nonunique_seconds": 20.0, "inversion_psnr": psnr, "inversion_accurate": True, "inversion_seconds": 200.0}


def test_diagnosing_some_networks_of_a_ledger_keeps_the_other_networks_rows_and_correlates_them_all(tmp_path,
                                                                                                    monkeypatch):
    """--models remakes the named networks' rows of the ledger's table; the others stay as they were."""
    from repinv.diagnostics.table import write_table

    script = _script()
    before = [_row("vit", d, 30.0 - d) for d in range(3)] + [_row("mixer", d, 20.0) for d in range(2)]
    write_table(before, tmp_path / "diagnostics.csv")
    remade = [_row("mixer", d, 25.0 - 2 * d) for d in range(2)]
    monkeypatch.setattr(script, "ledger_records", lambda root, *a: [dict(r) for r in remade])
    assert script.main(["--ledger", str(tmp_path), "--models", "mixer"]) == 0
    with open(tmp_path / "diagnostics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["layer"], float(r["inversion_psnr"])) for r in rows] == \
        [("vit", "L0", 30.0), ("vit", "L1", 29.0), ("vit", "L2", 28.0), ("mixer", "L0", 25.0), ("mixer", "L1", 23.0)]
    assert rows[0]["sigma_top"] == "2 1.5" and rows[0]["inversion_accurate"] == "True"
    with open(tmp_path / "correlations.csv") as f:
        corr = {r["diagnostic"]: r for r in csv.DictReader(f)}
    assert int(corr["nonunique_psnr"]["n"]) == 5 and float(corr["nonunique_psnr"]["spearman"]) == pytest.approx(1.0)
