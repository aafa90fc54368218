"""A step's counted work (`StepCost`) and what a ledger's plan costs (`repinv-claims --cost`)."""

from __future__ import annotations

import json

import pytest

import repinv
from repinv.claims.cli import main
from repinv.reporting.cost import COST_FILE

COUNT = ["logger=none", "+callbacks.cost._target_=repinv.reporting.cost.StepCost", "+callbacks.cost.out_dir=${output_dir}"]


def counted(tmp_path, *overrides: str) -> dict:
    out = tmp_path / str(len(list(tmp_path.iterdir())))
    repinv.run(["steps=3", *overrides, *COUNT, f"hydra.run.dir={out}"])
    return json.loads((out / COST_FILE).read_text())


def vit_tiny_flops(images: int, blocks: int) -> int:
    """Forward plus input gradient of vit_tiny (64x64 input, 16x16 patches: 17 tokens of width 64, MLP 256, 2 heads)
    to the end of block `blocks - 1`: every matmul twice, attention as torch counts it (backward 2.5x forward)."""
    tokens, width = 17, 64
    patch = 2 * 16 * (3 * 16 * 16) * width
    block = 2 * tokens * (width * 3 * width + width * width + 2 * width * 4 * width)
    attention = 2 * 2 * tokens * tokens * width
    return images * (2 * (patch + blocks * block) + blocks * int(3.5 * attention))


def test_a_step_counts_the_forward_and_input_gradient_of_its_targets(tmp_path):
    one = counted(tmp_path, "model=vit_tiny", "layers=[1]", "image=[chelsea]")
    assert one["flops_per_step"] == vit_tiny_flops(images=1, blocks=2), "a training step (not a log step), attention included"
    two = counted(tmp_path, "model=vit_tiny", "layers=[1]", "image=[chelsea,astronaut]")
    assert two["flops_per_step"] == vit_tiny_flops(images=2, blocks=2)
    assert counted(tmp_path, "model=vit_tiny", "layers=[0]", "image=[chelsea]")["flops_per_step"] == vit_tiny_flops(1, 1)
    assert 0 < one["kernel_ops_per_step"] < one["aten_ops_per_step"], "views launch nothing and are left out of kernels"


def test_cost_counts_each_network_once_and_runs_nothing(tmp_path, capsys):
    code = main(["--budget", "quick", "--claims", "mixer-layernorm", "--sources", "timm", "--cost", "--peak", "slow=1e-9",
                 "--out", str(tmp_path / "ledger")])
    out = capsys.readouterr().out
    assert code == 0, out
    costs = {tuple(c["network"]): c for c in json.loads((tmp_path / "ledger" / "cost.json").read_text())}
    assert len(costs) == 2, "runs that differ in seed, learning rate or normalisation do the same work"
    for network, cost in costs.items():
        assert cost["runs"] == 3 * 4 and cost["steps"] == 3 * 4 * 10, "3 seeds x 4 recipes of 10 steps"
        assert cost["flops_per_step"] == counted(tmp_path, *network)["flops_per_step"]
    assert not (tmp_path / "ledger" / "runs").exists(), "--cost makes no run of the ledger"
    total = sum(c["flops_per_step"] * c["steps"] for c in costs.values())
    assert f"{total / 1e15:.3g} PFLOP" in out and f"at slow (1e-09 TFLOP/s): at least {total / 1e3 / 60:.3g} min" in out
    assert "| mixer_tiny-no_layernorm | 12 | 120 |" in out and (tmp_path / "ledger" / "cost.md").read_text() == out


@pytest.mark.parametrize("value", ["fp32", "H200=0", "H200=-3", "=5", "H200=nan"])
def test_a_bad_peak_is_refused_before_anything_runs(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--budget", "quick", "--cost", "--peak", value, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "is not NAME=TFLOPS with a positive number" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_a_network_that_cannot_be_counted_is_one_paragraph_and_keeps_its_log(tmp_path, capsys):
    code = main(["--budget", "quick", "--claims", "vit-entry-untrained", "--sources", "timm", "--cost",
                 "--out", str(tmp_path), "+model.kwargs.no_such_option=1"])
    err = capsys.readouterr().err
    assert code == 2 and "repinv-claims: error: Counting the step of" in err and "Traceback" not in err, err
    [log] = (tmp_path / "cost" / "runs").glob("*.log")
    assert str(log) in " ".join(err.split()) and "no_such_option" in log.read_text(), "the error names the kept log"
    assert not (tmp_path / "cost.json").exists()


def test_cost_says_what_the_runs_not_finished_yet_need(tmp_path, capsys):
    args = ["--budget", "quick", "--claims", "vit-entry-untrained", "--sources", "timm", "--steps", "3", "--out", str(tmp_path)]
    assert main([*args, "--seeds", "1", "logger=none"]) == 0, "seed 0's run is made"
    capsys.readouterr()
    assert main([*args, "--seeds", "2", "--cost", "--peak", "slow=1e-9", "logger=none"]) == 0
    out = capsys.readouterr().out
    [cost] = json.loads((tmp_path / "cost.json").read_text())
    assert (cost["runs"], cost["steps"], cost["steps_left"]) == (2, 6, 3), "seed 1's run is left"
    left = cost["flops_per_step"] * 3
    assert f"The runs not finished in the ledger folder yet: {left / 1e15:.3g} PFLOP." in out
    assert f", {left / 1e3 / 60:.3g} min for the runs not finished" in out


def test_trained_claims_are_counted_without_their_weights(tmp_path, capsys):
    """Weights change no step's work: a plan with --pretrained is counted offline, on untrained networks."""
    code = main(["--budget", "quick", "--claims", "trained-input-falls-with-depth", "--sources", "timm", "--pretrained",
                 "--cost", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    [cost] = json.loads((tmp_path / "cost.json").read_text())
    assert "surgery=trained_input_untrained_encoders" in cost["network"] and cost["runs"] == 3 and cost["flops_per_step"] > 0
    assert not any(o.startswith("model.pretrained") for o in cost["network"])


def test_a_run_that_fails_in_the_counted_step_leaves_no_counting_mode_active(tmp_path):
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    from repinv.reporting.cost import StepCost

    cost = StepCost()
    cost.on_train_batch_start(None, None, None, batch_idx=1)
    assert _get_current_dispatch_mode() is not None
    cost.on_exception(None, None, RuntimeError("the step failed"))
    assert _get_current_dispatch_mode() is None, "every later operation of the process would be counted"
