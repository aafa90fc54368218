"""`repinv-claims`: each rule on both sides of its threshold, the ledger end to end on tiny models,
trained-weight claims without weights, and figures that do not pass untrained panels for trained."""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, read_metrics
from repinv.claims import report, rules
from repinv.claims.cli import main
from repinv.claims.registry import CLAIMS

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "scripts"), os.environ.get("PYTHONPATH", "")])}


def recs(psnr_by_layer: dict[str, list[float]], **extra) -> list[dict]:
    """Records for one condition: layer -> PSNR per sample (seed i, image 'chelsea')."""
    return [{"layer": layer, "psnr": v, "seed": i, "image": "chelsea", **extra}
            for layer, values in psnr_by_layer.items() for i, v in enumerate(values)]


def test_keeps_input_needs_every_layer_at_or_above_20_db():
    kept = rules.keeps_input({"vit": recs({"patch_embed": [30, 32], "L0": [20, 20], "L11": [27.5, 29.5]})}, "vit")
    assert kept.holds and kept.measured == "lowest L0 20.00 ± 0.00 dB" and kept.rule == "PSNR ≥ 20 dB at every layer"
    low = rules.keeps_input({"vit": recs({"patch_embed": [30, 32], "L0": [19, 20], "L11": [29, 31]})}, "vit")
    assert not low.holds and "lowest L0 19.5" in low.measured


def test_constant_with_depth_is_last_encoder_within_3_db_of_the_first_either_way_whatever_the_level():
    claim = next(c for c in CLAIMS if c.id == "vit-untrained-constant-depth")
    low_but_flat = claim.rule({"vit": recs({"patch_embed": [12, 13], "L0": [11, 12], "L11": [9, 10]})})
    assert low_but_flat.holds and low_but_flat.measured == "vit@last − vit@L0 -2.0 ± 0.0 dB"
    assert not claim.rule({"vit": recs({"patch_embed": [30, 30], "L0": [30, 30], "L11": [26.5, 27]})}).holds  # −3.25 dB
    rising = claim.rule({"vit": recs({"patch_embed": [20, 20], "L0": [18, 19], "L11": [22.4, 23.4]})})
    assert not rising.holds and rising.measured == "vit@last − vit@L0 4.4 ± 0.0 dB"  # better by 4.4 dB is not the same
    assert rising.rule == "|vit@last − vit@L0| < 3 dB"


def test_poor_and_declining_needs_a_first_layer_below_20_db_and_a_3_db_fall():
    assert rules.poor_and_declining({"m": recs({"L0": [18, 19], "L4": [14, 15]})}, "m").holds
    assert not rules.poor_and_declining({"m": recs({"L0": [20, 21], "L4": [14, 15]})}, "m").holds  # first not poor
    flat = rules.poor_and_declining({"m": recs({"L0": [18, 19], "L4": [16, 17]})}, "m")
    assert not flat.holds and flat.rule == "L0 < 20 dB and L4 − L0 ≤ −3 dB"


def test_same_is_two_sided():
    m = {"a": recs({"L0": [20, 22]}), "b": recs({"L0": [18, 19.5]})}
    assert rules.same(m, "a", "b").holds and rules.same(m, "b", "a").holds  # ±2.25 dB
    far = {"a": recs({"L0": [24, 26]}), "b": m["b"]}
    assert not rules.same(far, "a", "b").holds and not rules.same(far, "b", "a").holds


def test_loses_input_needs_a_3_db_fall_from_first_to_last_layer():
    assert rules.loses_input({"r": recs({"L0": [25, 27], "L4": [21, 24]})}, "r").holds  # −3.5 dB
    assert not rules.loses_input({"r": recs({"L0": [25, 27], "L4": [23, 25]})}, "r").holds  # −2 dB


def test_better_and_as_good_compare_paired_conditions_or_layers():
    m = {"no_ln": recs({"L0": [24, 26], "L1": [22, 24]}), "ln": recs({"L0": [20, 22], "L1": [19, 21]})}
    assert rules.better(m, "no_ln", "ln").holds  # +3.5 dB
    assert not rules.better(m, "ln", "no_ln").holds
    close = {"ln": recs({"L0": [21, 23], "L1": [20, 22]}), **{k: v for k, v in m.items() if k == "no_ln"}}
    assert not rules.better(close, "no_ln", "ln").holds  # +2.5 dB
    vit = {"vit": recs({"patch_embed": [30, 30], "L0": [26, 28], "L1": [20, 20]})}
    assert rules.better(vit, "vit", "vit", layer_a="first", layer_b="L0").holds  # +3 dB
    assert rules.as_good(vit, "vit", "vit", layer_a="L0", layer_b="first").holds  # −3 dB
    assert not rules.as_good(vit, "vit", "vit", layer_a="last", layer_b="first").holds  # −10 dB
    other_image = {"ln": [{**r, "image": "coffee"} for r in m["ln"]], "no_ln": m["no_ln"]}
    with pytest.raises(rules.Unmeasured, match="no seed and image measured in both"):
        rules.better(other_image, "no_ln", "ln")


def test_filter_and_class_rules():
    assert rules.unstructured_filters({"v": [{"structured": 0.05}, {"structured": 0.1}]}, "v").holds
    assert not rules.unstructured_filters({"v": [{"structured": 0.2}]}, "v").holds
    assert rules.about_half_structured({"v": [{"structured": 0.6}, {"structured": 0.5}]}, "v").holds
    assert rules.about_half_structured({"v": [{"structured": 0.3}]}, "v").holds
    assert not rules.about_half_structured({"v": [{"structured": 0.25}]}, "v").holds
    assert not rules.about_half_structured({"v": [{"structured": 0.8}]}, "v").holds
    one_lacks = [{"seed": 0, "structured": 0.1}, {"seed": 1, "structured": None}, {"seed": 2, "structured": 0.1}]
    for rule in (rules.unstructured_filters, rules.about_half_structured):
        with pytest.raises(rules.Unmeasured, match="the run of v for seed 1 holds no filters.json"):
            rule({"v": one_lacks}, "v")
    assert rules.generates_classes({"g": [{"rank": 0, "prob": 0.9}, {"rank": 3, "prob": 0.1}]}, "g").holds
    ranks = [{"rank": 0, "prob": 0.9}, {"rank": 3, "prob": 0.1}, {"rank": 1, "prob": 0.2}]
    assert not rules.generates_classes({"g": ranks}, "g").holds


def test_the_mixer_patch_claim_compares_the_studys_200k_and_800k_element_layers(tmp_path):
    """The study's patch-16 Mixer has "a hidden dimension per patch of 1024. Each layer therefore has a little over
    200k elements"; its patch-8 one "each layer contains >800k elements"."""
    import torch

    from conftest import compose_cfg
    from repinv.models.build import build_model

    claim = next(c for c in CLAIMS if c.id == "mixer-patch8")
    elements = {}
    for name in ("patch16", "patch8"):
        with torch.device("meta"):
            net = build_model(compose_cfg(claim.overrides(name, "study"), tmp_path)).net
            elements[name] = net.blocks[0](net.stem(torch.empty(1, 3, 224, 224))).numel()
    assert elements == {"patch16": 196 * 1024, "patch8": 784 * 1024}
    assert 200_000 < elements["patch16"] < 210_000 and elements["patch8"] > 800_000


def test_every_claim_has_runs_for_both_budgets_and_trained_claims_are_marked():
    ids = [c.id for c in CLAIMS]
    assert len(ids) == len(set(ids))
    assert {"vit-untrained-constant-depth", "resnet-untrained-loses-input", "mixer-layernorm"} <= set(ids)
    for claim in CLAIMS:
        for name in claim.runs:
            assert any(o.startswith("model=") for o in claim.overrides(name, "study"))
            assert any(o.startswith("model=") for o in claim.overrides(name, "quick"))
    assert {c.id for c in CLAIMS if c.trained} >= {"vit-entry-trained", "filters-trained-half", "class-generation-tv"}
    assert all(c.quote and len(c.quote.split()) >= 5 for c in CLAIMS)


def _ledger(out) -> list[dict]:
    return list(csv.DictReader(open(out / "claims.csv")))


@pytest.mark.slow
def test_quick_ledger_runs_claims_end_to_end_with_sensitivity(tmp_path, capsys, monkeypatch):
    plotted, draw = {}, report.depth_plot
    monkeypatch.setattr(report, "depth_plot",
                        lambda claim, series, out: plotted.setdefault(claim.id, series) and draw(claim, series, out))
    ids = "class-generation,vit-untrained-constant-depth,vit-entry-trained"
    code = main(["--budget", "quick", "--seeds", "1", "--claims", ids, "--sources", "timm", "--lrs", "0.5", "--image", "chelsea",
                 "--image", "astronaut", "--steps", "4", "--jobs", "2", "--out", str(tmp_path), "logger=none", "log_every=2"])
    assert code == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "claims.md"), str(tmp_path / "claims.csv")]
    ledger = {r["claim"]: r for r in _ledger(tmp_path)}
    assert list(ledger) == ids.split(",")
    kept = ledger["vit-untrained-constant-depth"]
    assert kept["verdict"] in {"holds", "fails"} and kept["seeds"] == "1" and kept["images"] == "chelsea, astronaut"
    assert kept["measured"].startswith("vit@last − vit@L0") and kept["rule"] == "|vit@last − vit@L0| < 3 dB"
    assert kept["recipe-dependent"].startswith(("no (4 recipes)", "yes"))
    commands = [p.read_text().splitlines() for p in tmp_path.glob("runs/vit_tiny-seed0-*/command.txt")]
    assert sum("model.std=[1,1,1]" in c and "optimizer.lr=0.5" in c for c in commands) == 1, commands
    sensitivity = list(csv.DictReader(open(tmp_path / "sensitivity.csv")))
    assert len([r for r in sensitivity if r["claim"] == "vit-untrained-constant-depth"]) == 4
    for trained in ("vit-entry-trained", "class-generation"):
        assert ledger[trained]["verdict"] == "needs trained weights" and ledger[trained]["runs"] == ""
        assert "--pretrained" in ledger[trained]["measured"] and "--checkpoint" in ledger[trained]["measured"], \
            "a claim left untested says how to give it trained weights"
    series = plotted["vit-untrained-constant-depth"]
    assert len(series) == 4, "one line per recipe"
    [folder] = kept["runs"].split("; ")
    assert [(r["layer"], r["psnr"]) for r in series["vit, default (linear lr)"]] == \
        [(r["layer"], r["psnr"]) for r in read_metrics(tmp_path / folder)], "the plot draws the run folder's records"
    assert (tmp_path / "plots" / "vit-untrained-constant-depth.png").is_file()
    assert "needs trained weights" in (tmp_path / "claims.md").read_text()


@pytest.mark.parametrize("claim", ["filters-trained-half", "trained-norm1"])
def test_trained_claims_run_with_a_checkpoint_and_check_it_loaded(tmp_path, trained_checkpoint, claim):
    """trained-norm1's networks are untrained with trained parts (transplants): they are judged, not failed."""
    code = main(["--budget", "quick", "--seeds", "1", "--claims", claim, "--sources", "timm", "--lrs",
                 "--steps", "1", "--checkpoint", f"vit_tiny={trained_checkpoint}", "--out", str(tmp_path), "logger=none"])
    [row] = _ledger(tmp_path)
    assert code == 0 and row["verdict"] in {"holds", "fails"}, row


@pytest.mark.parametrize("claim,cond,differ", [
    ("trained-pos-embed", "pos_embed", {"pos_embed"}),
    ("trained-norm1", "norm1", {"blocks.0.norm1.weight", "blocks.0.norm1.bias"}),
    ("trained-pos-embed", "transplant", {"patch_embed.proj.weight", "patch_embed.proj.bias"}),
])
def test_a_transplant_claims_conditions_differ_in_the_part_it_names(tmp_path, claim, cond, differ):
    """The study chains a trained input convolution to an untrained ViT, then swaps in one trained part at a time (the
    position embeddings, the first LayerNorm): each condition differs from its baseline in that part alone, the baseline
    from an untrained ViT in the input convolution alone."""
    import torch
    from safetensors.torch import save_file

    from conftest import compose_cfg
    from repinv.claims.registry import CLAIMS
    from repinv.models.build import build_model

    untrained = build_model(compose_cfg(["model=vit_tiny"], tmp_path)).net.state_dict()
    gen = torch.Generator().manual_seed(1)
    save_file({k: (v + 0.1 * torch.randn(v.shape, generator=gen)).contiguous() for k, v in untrained.items()},
              str(tmp_path / "trained.safetensors"))  # every tensor trained, LayerNorms included

    def weights(overrides: list[str], trained: bool = True) -> dict:
        loads = [f"model.checkpoint={tmp_path / 'trained.safetensors'}"] if trained else []
        return build_model(compose_cfg([*overrides, *loads], tmp_path)).net.state_dict()

    [c] = [c for c in CLAIMS if c.id == claim]
    mine, transplant = weights(c.overrides(cond, "quick")), c.overrides("transplant", "quick")
    base = (weights([o for o in transplant if not o.startswith("surgery=")], trained=False) if cond == "transplant"
            else weights(transplant))
    assert {k for k in mine if not torch.equal(mine[k], base[k])} == differ


def test_a_run_given_weights_whose_network_holds_none_has_failed(tmp_path):
    from repinv import study

    cases = [({"trained": False, "trained_parts": True}, True), ({"trained": False, "trained_parts": False}, False),
             ({"trained": False}, False), ({"trained": True}, True)]
    for record, ok in cases:
        run = study.expect_trained(study.Run(("model.pretrained=true",), tmp_path, study.FINISHED, [record]))
        assert run.ok == ok, record


@pytest.fixture
def trained_checkpoint(tmp_path):
    """vit_tiny weights from another seed, saved as a checkpoint file."""
    from hydra.utils import instantiate
    from safetensors.torch import save_file

    from conftest import compose_cfg

    net = instantiate(compose_cfg(["model=vit_tiny", "seed=5"], tmp_path).model).net
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_bad_claim_id_is_one_paragraph(capsys):
    assert main(["--claims", "vit-untrained-constant"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Did you mean 'vit-untrained-constant-depth'" in err and "Traceback" not in err


@pytest.mark.slow
def test_full_quick_ledger_has_a_verdict_in_every_row(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "repinv.claims", "--budget", "quick", "--seeds", "1",
                           "--out", str(tmp_path), "logger=none"], capture_output=True, text=True, env=ENV, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ledger = _ledger(tmp_path)
    assert [r["claim"] for r in ledger] == [c.id for c in CLAIMS]
    assert all(r["verdict"] in {"holds", "fails"} for r in ledger if not CLAIMS[ledger.index(r)].trained)
    assert all(r["verdict"] == "needs trained weights" for r in ledger if CLAIMS[ledger.index(r)].trained)


def test_a_run_that_fails_in_this_process_is_run_failed_with_its_reason(tmp_path, capsys):
    code = main(["--budget", "quick", "--seeds", "1", "--claims", "vit-entry-untrained", "--sources", "timm",
                 "--out", str(tmp_path), "logger=none", "+trainer.bogus_option=3"])
    [row] = _ledger(tmp_path)
    assert code == 1 and row["verdict"] == "run failed"
    assert row["measured"].startswith("RepinvError: trainer could not be built") and "bogus_option" in row["measured"]
    [log] = tmp_path.glob("runs/vit_tiny-seed0-*.log")
    assert "bogus_option" in log.read_text() and str(log) in row["measured"]
    assert capsys.readouterr().out.split() == [str(tmp_path / "claims.md"), str(tmp_path / "claims.csv")]


def test_figure_without_weights_labels_its_trained_panel(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fig_vit_b_32_conv_representations.py"), "--smoke",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=ENV, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["panel"]: r for r in csv.DictReader(open(tmp_path / "smoke" / "vit_b_32_conv_representations.csv"))}
    assert rows["trained ViT-B/32"]["weights"] == "none given"
    assert rows["untrained ViT-B/32"]["weights"] == "untrained"


def test_report_only_judges_finished_runs_and_launches_nothing(tmp_path, capsys):
    common = ["--budget", "quick", "--sources", "timm", "--seeds", "1", "--steps", "2", "--out", str(tmp_path), "logger=none"]
    both = ["--claims", "vit-entry-untrained,resnet-untrained-loses-input", "--report-only"]
    assert main([*common, *both]) == 0
    assert not list(tmp_path.glob("runs/*/metrics.json"))
    assert {r["verdict"] for r in _ledger(tmp_path)} == {"pending"}
    err = capsys.readouterr().err
    assert "not made yet: " in err and "run failed" not in err, "a run not made yet has not failed"
    assert main([*common, "--claims", "vit-entry-untrained"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert (f"judged resnet-untrained-loses-input too. Its runs are kept: `repinv-claims {' '.join(common)} --claims "
            "vit-entry-untrained,resnet-untrained-loses-input --report-only` writes that ledger again") in err, err
    assert main([*common, *both]) == 0
    ledger = {r["claim"]: r for r in _ledger(tmp_path)}
    assert ledger["vit-entry-untrained"]["verdict"] in {"holds", "fails"}
    assert ledger["resnet-untrained-loses-input"]["verdict"] == "pending"
    assert "rerun the same command" in ledger["resnet-untrained-loses-input"]["measured"]
    assert len(list(tmp_path.glob("runs/*/metrics.json"))) == 1
    made_with = f"Made with `repinv-claims {' '.join(common)} --claims vit-entry-untrained,resnet-untrained-loses-input`"
    assert made_with in (tmp_path / "claims.md").read_text(), "claims.md names the command that continues it"


def test_a_copied_ledger_narrowed_to_fewer_claims_names_the_command_for_the_folder_it_is_in(tmp_path, capsys):
    common = ["--budget", "quick", "--sources", "timm", "--seeds", "1", "--steps", "2", "logger=none", "--report-only"]
    both = "vit-entry-untrained,resnet-untrained-loses-input"
    assert main([*common, "--out", str(tmp_path / "made"), "--claims", both]) == 0
    shutil.copytree(tmp_path / "made", tmp_path / "copy")
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "copy"), "--claims", "vit-entry-untrained"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert (f"`repinv-claims --budget quick --sources timm --seeds 1 --steps 2 logger=none --out {tmp_path / 'copy'} "
            f"--claims {both} --report-only` writes that ledger again") in err, err
    assert str(tmp_path / "made") not in err
    from repinv.claims.cli import writing_to

    assert writing_to("repinv-claims --out=a --budget cpu", tmp_path) == f"repinv-claims --out {tmp_path} --budget cpu"
    assert writing_to("repinv-claims --budget cpu", tmp_path) == f"repinv-claims --out {tmp_path} --budget cpu"


def test_a_finished_run_kept_without_what_its_rule_reads_is_incomplete_not_a_crash(tmp_path, capsys):
    args = ["--budget", "quick", "--sources", "timm", "--seeds", "1", "--steps", "2",
            "--claims", "filters-untrained-unstructured", "--out", str(tmp_path), "logger=none"]
    assert main(args) == 0 and _ledger(tmp_path)[0]["verdict"] == "holds"
    [filters] = tmp_path.glob("runs/*/filters.json")
    filters.unlink()
    assert main([*args, "--report-only"]) == 0
    [row] = _ledger(tmp_path)
    assert row["verdict"] == "incomplete runs"
    assert "filters.json" in row["measured"] and "rerun the same command" in row["measured"]


@pytest.mark.parametrize("args,needle", [
    (["--out", "{file}"], "--out {file} is a file"),
    (["--out", "{file}/ledger"], "--out {file}/ledger is inside {file}, which is a file; the ledger is a folder"),
    (["--image", "/nonexistent.jpg"], "--image /nonexistent.jpg: image=/nonexistent.jpg is neither an embedded photograph"),
    (["--lrs", "-1"], "--lrs -1: learning rates must be positive finite numbers"),
    (["--lrs", "0.1", "none"], "give positive learning rates, or none alone"),
    (["--steps", "0"], "--steps 0 must be at least 1"),
    (["--checkpoint", "vit_b_3={file}"], "'vit_b_3' is not a model config. Did you mean 'vit_b_32'"),
    (["--checkpoint", "vit_b_32=/no/such.safetensors"], "/no/such.safetensors is not a file"),
    (["objective.layer=nonexistent"], "Could not override 'objective.layer'"),
    (["param=bogus"], "param=bogus: there is no config 'bogus' in the group 'param'"),
    (["metrics.psnr=null"], "metrics.psnr=null: every run's records must hold psnr for the ledger's rules"),
    (["seed=0"], "seed=0: the ledger sets seed in its runs, per claim, seed and recipe, and an extra override would replace "
                 "it in every run; use --seeds instead"),
    (["+steps=20"], "+steps=20: the ledger sets steps in its runs"),
    (["model=vit_tiny"], "model=vit_tiny: the ledger sets model in its runs, per claim, seed and recipe, and an extra "
                         "override would replace it in every run; leave it out"),
    (["optimizer.lr=0.1"], "use --lrs instead"),
    (["init.std=-1"], "init.mean=0.7 and init.std=-1 must be numbers"),
    (["--peak", "H200 fp32=67"], "--peak H200 fp32=67: a peak rate gives the least time of a counted plan, and only "
                                 "--cost counts one; add --cost"),
    (["--claims", ","], "--claims ',' names no claim; give comma-separated claim ids, or leave --claims out for all. The "
                        "claims are: class-generation, class-generation-tv, vit-untrained-constant-depth,"),
    (["--claims", ""], "--claims '' names no claim"),
    (["--sources", ","], "--sources ',' names no model source; give a comma-separated list of timm, torchvision, or "
                         "leave --sources out for the budget's (timm,torchvision)"),
    (["--sources", ""], "--sources '' names no model source"),
    (["--sources", "timm", "--claims", "vit-untrained-constant-depth-tv"],
     "--claims vit-untrained-constant-depth-tv is checked on torchvision's models, which --sources leaves out (timm); "
     "add --sources timm,torchvision"),
])
def test_every_argument_is_checked_before_the_first_run(args, needle, tmp_path, capsys, monkeypatch):
    import repinv.study

    monkeypatch.setattr(repinv.study, "execute", lambda *a, **k: pytest.fail("a run started before the arguments were checked"))
    (tmp_path / "file").write_text("")
    code = main(["--budget", "quick", "--out", str(tmp_path / "ledger"), *(a.format(file=tmp_path / "file") for a in args)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("repinv-claims: error: ") and "Traceback" not in err, err
    assert needle.format(file=tmp_path / "file") in " ".join(err.split()), err
    assert not (tmp_path / "ledger").exists()


def test_a_selection_with_no_runnable_claim_still_writes_its_ledger(tmp_path, capsys):
    out = tmp_path / "new" / "ledger"
    assert main(["--budget", "quick", "--claims", "class-generation", "--out", str(out)]) == 0
    with open(out / "claims.csv") as f:
        assert [r["verdict"] for r in csv.DictReader(f)] == ["needs trained weights"]


@pytest.mark.parametrize("budget", ["quick", "study"])
def test_lrs_none_is_the_default_recipe_only(budget, tmp_path, capsys):
    """No constant rate is no sensitivity check: a recipe-sensitive claim is judged under the default recipe alone."""
    from repinv.claims.cli import check_lrs, parser

    assert check_lrs(parser().parse_args(["--lrs", "none"]).lrs) == []
    assert main(["--lrs", "none", "--list"]) == 0
    assert main(["--budget", budget, "--claims", "vit-untrained-constant-depth", "--sources", "timm", "--lrs", "none",
                 "--out", str(tmp_path), "--report-only"]) == 0
    assert [r["recipe"] for r in csv.DictReader(open(tmp_path / "sensitivity.csv"))] == ["default (linear lr)"]


def _fake_ledger(root, image: str, precision: str | None, sensitivity: list[tuple[str, str, str, str]], seeds: int = 1):
    """A ledger folder as repinv-claims leaves it, reduced to what --compare reads."""
    (root / "runs" / "run-0").mkdir(parents=True)
    (root / "runs" / "run-0" / "command.txt").write_text("\n".join(["model=vit_b_32", *([precision] if precision else [])]))
    report.write_csv(root / "claims.csv", [{"claim": s[0], "images": image, "seeds": seeds} for s in sensitivity],
                     ["claim", "images", "seeds"])
    report.write_csv(root / "sensitivity.csv", [dict(zip(("claim", "recipe", "measured", "verdict"), s)) for s in sensitivity],
                     ["claim", "recipe", "measured", "verdict"])


def test_compare_sets_ledgers_side_by_side_naming_photograph_and_precision(tmp_path, capsys):
    _fake_ledger(tmp_path / "a", "chelsea", None, [("depth", "default", "d 1.7 ± 0.0 dB", "holds"),
                                                   ("depth", "constant", "d -9.0 ± 0.0 dB", "fails")])
    _fake_ledger(tmp_path / "b", "astronaut", "precision=bf16", [("depth", "default", "d -4.0 ± 0.5 dB", "fails"),
                                                                  ("mixer", "default", "m 3.1 ± 0.0 dB", "holds")])
    assert main(["--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert f"Made with `repinv-claims --compare {tmp_path / 'a'} {tmp_path / 'b'}`" in out
    table = out[out.index("| claim"):].splitlines()
    assert table[0] == "| claim | recipe | a (chelsea; 32-true) | b (astronaut; bf16) |"
    assert table[2:] == ["| depth | default | holds: d 1.7 dB | fails: d -4.0 ± 0.5 dB |",
                         "| depth | constant | fails: d -9.0 dB |  |",
                         "| mixer | default |  | holds: m 3.1 dB |"]


def test_compare_drops_only_an_sd_of_one_value_and_never_part_of_a_number(tmp_path, capsys):
    """One seed on one photograph: "± 0.0" is the sd of one value and goes, "± 0.04" stays whole; three seeds: every sd
    stays, zero or not."""
    _fake_ledger(tmp_path / "one", "chelsea", None, [("depth", "default", "d 2.99 ± 0.04 dB", "fails"),
                                                     ("loses", "default", "L0 31.1 ± 0.0 dB; L4 − L0 -3.00 ± 0.00 dB", "holds")])
    _fake_ledger(tmp_path / "three", "chelsea", None, [("depth", "default", "d 2.99 ± 0.00 dB", "fails"),
                                                       ("loses", "default", "L0 31.1 ± 0.0 dB; L4 − L0 -3.0 ± 0.2 dB", "holds")],
                 seeds=3)
    assert main(["--compare", str(tmp_path / "one"), str(tmp_path / "three")]) == 0
    table = capsys.readouterr().out.split("| claim")[1].splitlines()
    assert table[2] == "| depth | default | fails: d 2.99 ± 0.04 dB | fails: d 2.99 ± 0.00 dB |"
    assert table[3] == ("| loses | default | holds: L0 31.1 dB; L4 − L0 -3.00 dB | "
                        "holds: L0 31.1 ± 0.0 dB; L4 − L0 -3.0 ± 0.2 dB |")


def test_compare_keeps_a_column_for_each_of_two_ledgers_in_folders_of_one_name(tmp_path, capsys):
    """hostA/cpu and hostB/cpu, both on chelsea in fp32: each keeps its column, named by its path."""
    for host, verdict in (("hostA", "holds"), ("hostB", "fails")):
        _fake_ledger(tmp_path / host / "cpu", "chelsea", None, [("depth", "default", "d 1.0 ± 0.0 dB", verdict)])
    assert main(["--compare", str(tmp_path / "hostA" / "cpu"), str(tmp_path / "hostB" / "cpu")]) == 0
    table = capsys.readouterr().out.split("| claim")[1].splitlines()
    assert table[0].count("(chelsea; 32-true)") == 2 and str(tmp_path / "hostB" / "cpu") in table[0]
    assert table[2] == "| depth | default | holds: d 1.0 dB | fails: d 1.0 dB |"
    assert main(["--compare", str(tmp_path / "hostA" / "cpu"), str(tmp_path / "hostA" / "cpu")]) == 2
    assert "names one ledger folder twice" in " ".join(capsys.readouterr().err.split())


def test_compare_of_a_folder_without_a_ledger_is_one_paragraph(tmp_path, capsys):
    assert main(["--compare", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"repinv-claims: error: --compare {tmp_path}: no ledger there") and "Traceback" not in err
    assert "docs/study/cpu docs/study/cpu-astronaut" in err


@pytest.mark.parametrize("claim_id,cond,holds", [("trained-norm1", "norm1", True), ("trained-pos-embed", "pos_embed", False)])
def test_the_first_encoder_claims_judge_the_first_encoder_alone(claim_id, cond, holds):
    """"the change in first encoder layer representational accuracy", "the first layer norm (...) of the first
    encoder": a 6 dB change at L0 is judged as 6 dB, not diluted by the shared patch embedding and deeper layers."""
    claim = next(c for c in CLAIMS if c.id == claim_id)
    transplant = {"patch_embed": [25, 25], "L0": [20, 20], "L5": [15, 15], "L11": [14, 14]}
    verdict = claim.rule({"transplant": recs(transplant), cond: recs({**transplant, "L0": [26, 26]})})
    assert verdict.holds is holds and verdict.measured.startswith(f"{cond}@L0 − transplant@L0 6.0"), verdict


def test_a_verdict_within_rounding_of_its_threshold_shows_the_second_decimal():
    """3.01 dB holds and 2.99 dB fails a 3 dB gap: both would read "3.0" at one decimal."""
    for a, holds, shown in ((33.01, True, "3.01 ± 0.00 dB"), (32.99, False, "2.99 ± 0.00 dB"), (35.04, True, "5.0 ± 0.0 dB")):
        verdict = rules.better({"a": recs({"L0": [a, a]}), "b": recs({"L0": [30.0, 30.0]})}, "a", "b")
        assert verdict.holds is holds and verdict.measured == f"a − b {shown}", verdict
    kept = rules.keeps_input({"vit": recs({"L0": [19.98, 19.98]})}, "vit")
    assert not kept.holds and kept.measured == "lowest L0 19.98 ± 0.00 dB"


def test_a_relative_image_path_names_the_file_it_points_at(tmp_path, monkeypatch, capsys):
    """`--image photo.png` typed in two folders is two photographs: the second's ledger does not reuse the first's runs,
    and the runs and the recorded command name the file by its absolute path."""
    import numpy as np
    from PIL import Image

    for i, name in enumerate(("a", "b")):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((32, 32, 3), 60 + 120 * i, np.uint8)).save(tmp_path / name / "photo.png")
    args = ["--budget", "quick", "--sources", "timm", "--seeds", "1", "--steps", "2", "--claims", "vit-entry-untrained",
            "--image", "photo.png", "--out", str(tmp_path / "ledger"), "logger=none"]
    monkeypatch.chdir(tmp_path / "a")
    assert main(args) == 0 and _ledger(tmp_path / "ledger")[0]["verdict"] in {"holds", "fails"}
    [command] = (tmp_path / "ledger").glob("runs/*/command.txt")
    assert f"image=['{tmp_path / 'a' / 'photo.png'}']" in command.read_text().splitlines()
    assert f"--image {tmp_path / 'a' / 'photo.png'}" in (tmp_path / "ledger" / "claims.md").read_text()
    monkeypatch.chdir(tmp_path / "b")
    capsys.readouterr()
    assert main([*args, "--report-only"]) == 2
    assert f"--image {tmp_path / 'a' / 'photo.png'}" in " ".join(capsys.readouterr().err.split())
    assert main([*args, "--out", str(tmp_path / "other"), "--report-only"]) == 0
    assert _ledger(tmp_path / "other")[0]["verdict"] == "pending", "the other photo.png has no run yet"


def _bf16_run_in(root):
    """A finished run recorded in `root` as having stepped in bf16."""
    (root / "runs" / "made").mkdir(parents=True)
    (root / "runs" / "made" / "command.txt").write_text("model=vit_tiny\nprecision=bf16")


def test_only_the_cpu_budget_keeps_the_precision_of_the_runs_a_ledger_holds(tmp_path, monkeypatch):
    """A quick ledger in a folder that holds a bf16 run steps in fp32 as its command says; the cpu budget keeps bf16."""
    from repinv import study
    from repinv.claims.ledger import BUDGETS, plan
    from repinv.sources import Weights

    monkeypatch.setattr("repinv.models.packed.native_bf16", lambda: False)
    for budget, bf16 in (("quick", False), ("cpu", True)):
        _bf16_run_in(tmp_path / budget)
        p = plan([c for c in CLAIMS if c.id == "vit-entry-untrained"], BUDGETS[budget], tmp_path / budget, 1, ["chelsea"],
                 None, Weights().overrides, [])
        assert {study.value(o, "precision") for o in p.runs} == {"bf16" if bf16 else None}, budget
        assert main(["--budget", budget, "--claims", "vit-entry-untrained", "--sources", "timm", "--out",
                     str(tmp_path / budget), "--report-only"]) == 0
        made_with = re.search(r"Made with `(.+?)`", (tmp_path / budget / "claims.md").read_text()).group(1)
        assert ("precision=bf16" in made_with) is bf16, made_with


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "no-native-bf16"])
def test_a_cpu_ledgers_command_names_its_precision_and_plans_its_runs_on_any_cpu(native, tmp_path, monkeypatch):
    """The cpu budget's precision depends on the CPU: the recorded command names it, and run on a CPU of the other
    kind in a new folder it plans the runs the ledger holds."""
    from repinv.claims.cli import parser

    ledger = ["--budget", "cpu", "--claims", "vit-entry-untrained", "--report-only"]
    monkeypatch.setattr("repinv.models.packed.native_bf16", lambda: native)
    assert main([*ledger, "--out", str(tmp_path / "made")]) == 0
    made_with = re.search(r"Made with `(.+?)`", (tmp_path / "made" / "claims.md").read_text()).group(1)
    assert made_with.endswith("precision=bf16" if native else "precision=32-true"), made_with
    monkeypatch.setattr("repinv.models.packed.native_bf16", lambda: not native)
    again = shlex.split(made_with)[1:]
    assert parser().parse_args(again).overrides == [made_with.split()[-1]]
    assert main([*again, "--out", str(tmp_path / "again"), "--report-only"]) == 0
    runs = [_ledger(tmp_path / folder)[0]["runs"] for folder in ("made", "again")]
    assert runs[0] == runs[1] and runs[0]


def test_report_only_with_other_settings_than_the_ledgers_is_refused(tmp_path, capsys, monkeypatch):
    """The ledger's own command writes it again; another budget, seed count or photograph would judge runs it does not
    hold, so the ledger is left as it is and the error names its settings and the command that re-reports it."""
    monkeypatch.setattr("repinv.models.packed.native_bf16", lambda: False)
    own = ["--budget", "cpu", "--claims", "vit-entry-untrained", "--out", str(tmp_path), "--report-only"]
    assert main(own) == 0
    before = {f: (tmp_path / f).read_text() for f in ("claims.md", "claims.csv", "sensitivity.csv")}
    capsys.readouterr()
    for other, own_setting in ((["--budget", "quick"], "--budget cpu"), (["--budget", "cpu", "--seeds", "2"], "--seeds 1"),
                               (["--budget", "cpu", "--image", "astronaut"], "--image chelsea")):
        assert main(["--out", str(tmp_path), "--report-only", *other]) == 2, other
        err = " ".join(capsys.readouterr().err.split())
        assert err.startswith("repinv-claims: error: --report-only would write the ledger") and "Traceback" not in err
        assert f"it was made with {own_setting}" in err, err
        assert (f"Write it again with `repinv-claims --budget cpu --claims vit-entry-untrained --out {tmp_path} "
                "precision=32-true --report-only`") in err, err
        assert {f: (tmp_path / f).read_text() for f in before} == before
    assert main(own) == 0


def _run(tmp_path, seed: int, psnr: dict[str, float], **extra):
    """A finished run of seed `seed` whose records hold these PSNRs by layer."""
    from repinv import study

    folder = tmp_path / "runs" / f"vit-seed{seed}"
    return seed, study.Run(("model=vit_b_32",), folder, study.FINISHED,
                           [{"layer": layer, "psnr": v, "image": "chelsea", "diverged": False, **extra} for layer, v in
                            psnr.items()])


@pytest.mark.parametrize("bad", [{"psnr": float("nan")}, {"psnr": None}, {"diverged": True}],
                         ids=["nan", "null", "diverged"])
def test_a_run_that_diverged_gives_its_claim_no_verdict_and_names_the_run(bad, tmp_path):
    from repinv.claims.ledger import DIVERGED, judge

    claim = next(c for c in CLAIMS if c.id == "vit-untrained-constant-depth")
    good = {"patch_embed": 30.0, "L0": 25.0, "L11": 24.0}
    for seeds in (1, 2):
        runs = [_run(tmp_path, seed, good) for seed in range(seeds - 1)]
        seed, broken = _run(tmp_path, seeds - 1, good)
        broken.records[-1].update(bad)
        verdict, measured, rule = judge(claim, {"vit": [*runs, (seed, broken)]})
        assert verdict == DIVERGED and rule == "", (verdict, measured)
        assert measured.startswith(f"runs/{broken.folder.name} diverged or measured a non-finite number at L11 on chelsea")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc, where no folder can be made")
def test_an_out_folder_that_cannot_be_made_is_one_paragraph(capsys):
    assert main(["--budget", "quick", "--claims", "vit-entry-untrained", "--out", "/proc/nope/x", "--report-only"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("repinv-claims: error: --out /proc/nope/x: the folder could not be made") and "Traceback" not in err
    assert "Give a folder this user can write to" in err


def test_the_readme_names_the_depths_the_study_budget_runs():
    from repinv.claims.registry import ARCHS

    readme = " ".join((REPO / "README.md").read_text().split())
    assert all("layers=[0,1,4,8]" in ARCHS[(mixer, "timm")]["study"] for mixer in ("mixer_l16", "mixer_l8"))
    assert "layers=[0,3,7,11,15]" in ARCHS[("vit_l_16", "timm")]["study"]
    assert "the Mixers at `layers=[0,1,4,8]`, ViT-L/16 at `layers=[0,3,7,11,15]`" in readme
    assert "on the study's models at every depth" not in readme


def test_the_falling_rules_decide_at_3_db_and_the_poor_first_layer_at_20_db():
    """Each threshold from both sides, 0.01 dB away: a fall of 3.01 dB holds and of 2.99 dB does not; a first layer
    at 19.99 dB is poor and at 20.01 dB is not."""
    for fall, holds in ((3.01, True), (2.99, False)):
        assert rules.loses_input({"r": recs({"L0": [25, 25], "L4": [25 - fall] * 2})}, "r").holds is holds, fall
        assert rules.poor_and_declining({"m": recs({"L0": [19, 19], "L4": [19 - fall] * 2})}, "m").holds is holds, fall
    for first, holds in ((19.99, True), (20.01, False)):
        assert rules.poor_and_declining({"m": recs({"L0": [first, first], "L4": [10, 10]})}, "m").holds is holds, first
