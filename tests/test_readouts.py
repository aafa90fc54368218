"""The numbers a user reads, recomputed by hand from the records they come from: each claim rule's verdict and
measured text, the ledger's verdict from run folders, a figure's CSV, the W&B results table, a bf16 run's final
metrics; and both ways a run may batch its layers (the shared pass and one pass per layer) giving one result."""

from __future__ import annotations

import csv
import json
import math
from functools import partial

import pytest
import torch

import wandb_reader
from conftest import REPO, TINY, compose_cfg, read_metrics
from repinv import study
from repinv.claims import rules
from repinv.claims.ledger import Plan, judge
from repinv.claims.registry import Claim, Run as Condition
from repinv.claims.report import rows as ledger_rows
from repinv.inputs.images import TargetImage
from repinv.metrics import psnr
from repinv.objectives.layer import LayerInversion

SAMPLES = [(0, "chelsea"), (0, "astronaut"), (1, "chelsea"), (1, "astronaut")]  # two seeds, two images


def recs(values: dict[str, list[float]], order=SAMPLES, **extra) -> list[dict]:
    """Records of one condition: layer -> PSNR per sample of `order` (seed, image)."""
    return [{"layer": layer, "psnr": v, "seed": s, "image": i, **extra}
            for layer, vs in values.items() for (s, i), v in zip(order, vs)]


# -- the rules, with two seeds and two images: differences are paired by (seed, image) ---------------
def test_better_pairs_each_seed_and_image_and_reports_mean_and_sd_of_the_differences():
    a = recs({"L0": [30, 20, 31, 21]})
    b = recs({"L0": [26, 18, 27, 17]}, order=SAMPLES[::-1])  # listed in another order: b = 17, 27, 18, 26 for a's samples
    diffs = [30 - 17, 20 - 27, 31 - 18, 21 - 26]
    v = rules.better({"a": a, "b": b}, "a", "b")
    m, s = sum(diffs) / 4, math.sqrt(sum((d - sum(diffs) / 4) ** 2 for d in diffs) / 3)
    assert v.holds and v.measured == f"a − b {m:.1f} ± {s:.1f} dB" and v.rule == "a − b ≥ 3 dB"
    assert not rules.better({"a": a, "b": recs({"L0": [28, 16, 29, 18]}, order=SAMPLES[::-1])}, "a", "b").holds  # +1.75 dB


def test_better_compares_only_the_samples_both_conditions_have():
    a = recs({"L0": [30, 20, 31, 21]})
    b = recs({"L0": [29, 19, 27]}, order=SAMPLES[:3])  # seed 1 astronaut is missing: +1, +1, +4 -> 2.0 ± 1.7
    v = rules.better({"a": a, "b": b}, "a", "b")
    assert not v.holds and v.measured == "a − b 2.0 ± 1.7 dB"


def test_better_between_layers_pairs_per_sample_and_as_good_allows_3_db_less():
    vit = {"vit": recs({"patch_embed": [30, 28, 32, 30], "L0": [27, 26, 28, 27], "L11": [20, 20, 21, 19]})}
    first_over_l0 = rules.better(vit, "vit", "vit", layer_a="first", layer_b="L0")  # 3, 2, 4, 3
    assert first_over_l0.holds and first_over_l0.measured == "vit@first − vit@L0 3.00 ± 0.82 dB"
    l0_vs_first = rules.as_good(vit, "vit", "vit", layer_a="L0", layer_b="first")  # −3.0 ± 0.8
    assert l0_vs_first.holds and l0_vs_first.rule == "vit@L0 − vit@first ≥ −3 dB"
    last_vs_first = rules.as_good(vit, "vit", "vit", layer_a="last", layer_b="first")  # −10, −8, −11, −11
    assert not last_vs_first.holds and last_vs_first.measured == "vit@last − vit@first -10.0 ± 1.4 dB"


def test_keeps_input_needs_every_layers_mean_at_20_db_or_above():
    kept = rules.keeps_input({"vit": recs({"patch_embed": [30, 28, 32, 30], "L5": [21, 19, 22, 18]})}, "vit")
    assert kept.holds and kept.measured == "lowest L5 20.00 ± 1.83 dB"  # mean 20.00 with two images below 20
    lost = rules.keeps_input({"vit": recs({"patch_embed": [30, 28, 32, 30], "L5": [21, 19, 21, 18]})}, "vit")
    assert not lost.holds and lost.measured == "lowest L5 19.8 ± 1.5 dB"


def test_loses_input_needs_the_last_layer_3_db_below_the_first():
    lost = rules.loses_input({"r": recs({"L0": [25, 27, 26, 24], "L4": [21, 24, 22, 20]})}, "r")  # −4, −3, −4, −4
    assert lost.holds and lost.measured == "L0 25.5 ± 1.3 dB, L4 21.8 ± 1.7 dB; L4 − L0 -3.8 ± 0.5 dB"
    assert lost.rule == "L4 − L0 ≤ −3 dB"
    assert not rules.loses_input({"r": recs({"L0": [25, 27, 26, 24], "L4": [23, 25, 24, 22]})}, "r").holds  # −2


def test_filter_rules_average_the_structured_fraction_over_seeds():
    runs = {"v": [{"structured": 0.05, "seed": 0}, {"structured": 0.15, "seed": 1}]}
    unstructured = rules.unstructured_filters(runs, "v")
    assert unstructured.holds and unstructured.measured == "structured 0.10 ± 0.07"
    assert not rules.about_half_structured(runs, "v").holds
    trained = {"v": [{"structured": 0.5, "seed": 0}, {"structured": 0.7, "seed": 1}]}
    assert rules.about_half_structured(trained, "v").holds and not rules.unstructured_filters(trained, "v").holds
    mostly = {"v": [{"structured": 0.8, "seed": 0}, {"structured": 0.9, "seed": 1}]}
    assert not rules.about_half_structured(mostly, "v").holds


def test_generates_classes_counts_rank_0_as_top_1():
    gen = [{"rank": r, "prob": p, "seed": s} for r, p, s in [(0, 0.9, 0), (0, 0.7, 0), (2, 0.1, 1), (0, 0.5, 1)]]
    v = rules.generates_classes({"g": gen}, "g")
    assert v.holds and v.measured == "top-1 0.75; prob 0.6 ± 0.3" and v.rule == "top-1 fraction ≥ 0.5"
    assert not rules.generates_classes({"g": gen[2:3] + gen[:1] + [{"rank": 1, "prob": 0.2}]}, "g").holds


# -- the ledger, from run folders --------------------------------------------------------------
def run_folder(root, cond: str, seed: int, psnrs: dict[str, list[float]], structured: float | None = None) -> study.Run:
    """A finished run folder of one seed holding two images' records, read back by the study runner as a ledger reads it."""
    run = study.run_for(root, [f"model={cond}", f"seed={seed}", "image=[chelsea,astronaut]"])
    run.folder.mkdir(parents=True)
    records = [{"image": image, "layer": layer, "psnr": values[k], "status": "finished"}
               for layer, values in psnrs.items() for k, image in enumerate(["chelsea", "astronaut"])]
    (run.folder / "metrics.json").write_text(json.dumps(records))
    (run.folder / study.COMMAND).write_text("\n".join(run.overrides))
    if structured is not None:
        (run.folder / "filters.json").write_text(json.dumps({"structured": structured}))
    return study.make(run)


def claim(rule, **runs) -> Claim:
    return Claim("test-claim", "a claim", "the words it checks", "figure", "timm", {name: Condition(name) for name in runs}, rule)


def test_ledger_verdicts_and_measured_text_come_from_the_run_folders(tmp_path):
    """Two seeds' folders per condition, two images each: `wide` beats `narrow` by 4, 2, 5, 3 dB (3.5 ± 1.3)."""
    conds = {"wide": [(s, run_folder(tmp_path, "wide", s, {"L0": v})) for s, v in [(0, [30, 24]), (1, [31, 25])]],
             "narrow": [(s, run_folder(tmp_path, "narrow", s, {"L0": v})) for s, v in [(0, [26, 22]), (1, [26, 22])]]}
    assert all(r.status == "finished" and len(r.records) == 2 for rs in conds.values() for _, r in rs)
    holds = claim(partial(rules.better, a="wide", b="narrow"), wide=1, narrow=1)
    assert judge(holds, conds) == ("holds", "wide − narrow 3.5 ± 1.3 dB", "wide − narrow ≥ 3 dB")
    fails = claim(partial(rules.better, a="narrow", b="wide"), wide=1, narrow=1)
    assert judge(fails, conds) == ("fails", "narrow − wide -3.5 ± 1.3 dB", "narrow − wide ≥ 3 dB")
    plan = Plan(conditions={("test-claim", "default (linear lr)"): conds})
    [row], _ = ledger_rows([holds], plan, ["chelsea", "astronaut"], 2, tmp_path)
    assert (row["verdict"], row["measured"]) == ("holds", "wide − narrow 3.5 ± 1.3 dB")
    assert row["runs"].count("runs/") == 4


def test_ledger_reads_each_seeds_filters_json(tmp_path):
    conds = {"vit": [(s, run_folder(tmp_path, "vit", s, {"patch_embed": [30, 30]}, structured=f))
                     for s, f in [(0, 0.6), (1, 0.8)]]}
    assert judge(claim(partial(rules.about_half_structured, cond="vit"), vit=1), conds)[:2] == ("holds", "structured 0.70 ± 0.12")
    assert judge(claim(partial(rules.unstructured_filters, cond="vit"), vit=1), conds)[0] == "fails"


def test_a_failed_run_is_the_verdict_not_a_rule_on_partial_records(tmp_path):
    run = study.run_for(tmp_path, ["model=broken"])
    run.status = "exit 1; see broken.log"
    verdict = judge(claim(partial(rules.loses_input, cond="r"), r=1), {"r": [(0, run)]})
    assert verdict == ("run failed", "exit 1; see broken.log", "")


# -- the shared pass and one pass per layer --------------------------------------------------
def _objective(stack, layers, net, images):
    objective = LayerInversion(layers, stack=stack)
    objective.setup(net, lambda x: x, images, seed=0)
    return objective


def test_shared_pass_with_layers_out_of_depth_order_scores_each_target_against_its_own_layer_and_image():
    """Layers given deepest first: the shared pass runs them shallowest first and must put each loss back in place."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("vit_base_patch32_224", img_size=64, patch_size=16, depth=3, embed_dim=32, num_heads=2).eval()
    gen = torch.Generator().manual_seed(0)
    images = [TargetImage(name=n, pixels=torch.rand(3, 64, 64, generator=gen)) for n in "ab"]
    layers = [2, "patch_embed", 0]
    shared, separate = _objective(True, layers, net, images), _objective(False, layers, net, images)
    assert shared.shared is not None and shared.shared.order == [1, 2, 0] and separate.shared is None
    x = torch.rand(6, 3, 64, 64, generator=gen)  # every row its own image: a row scored against another's target shows
    (loss, stats), (alone, alone_stats) = shared(net, x), separate(net, x)
    with torch.no_grad():
        for row, (g, image) in enumerate([(g, i) for g in range(3) for i in range(2)]):
            tap = shared.taps[g]
            expected = 0.15 * (tap(net, x[row : row + 1]) - tap(net, images[image].pixels[None])).abs().sum()
            assert loss[row].item() == pytest.approx(expected.item(), rel=1e-4), (tap.label, image)
    assert torch.allclose(loss, alone, rtol=1e-4) and torch.allclose(stats["output_l2"], alone_stats["output_l2"], rtol=1e-4)


def _spy_module(monkeypatch) -> dict:
    """Keeps the run's module (at fit start) so a test can look at what it used and its final image."""
    from repinv.engine import module as module_lib

    seen, original = {}, module_lib.ImageOptimization.on_fit_start

    def spy(self):
        original(self)
        seen["module"] = self

    monkeypatch.setattr(module_lib.ImageOptimization, "on_fit_start", spy)
    return seen


def test_stack_true_and_false_end_to_end_give_each_target_the_same_result(run_repinv, monkeypatch):
    seen = _spy_module(monkeypatch)
    common = ("layers=[1,patch_embed,0]", "steps=15", "log_every=14", "logger=none")
    stacked, _ = run_repinv("objective.stack=true", *common, name="stacked")
    assert seen["module"].objective.shared is not None, "objective.stack=true runs the shared pass"
    separate, _ = run_repinv("objective.stack=false", *common, name="separate")
    assert seen["module"].objective.shared is None, "objective.stack=false runs one pass per layer"
    assert [r["layer"] for r in stacked] == [r["layer"] for r in separate] == ["L1", "patch_embed", "L0"]
    for s, p in zip(stacked, separate):
        for key in ("loss", "psnr", "output_l2", "noise_shift_l2"):
            assert s[key] == pytest.approx(p[key], rel=1e-3), (s["layer"], key)


# -- final metrics under bf16 -------------------------------------------------------------------
def test_bf16_run_reports_final_metrics_of_an_fp32_forward_of_its_final_image(run_repinv, monkeypatch):
    seen = _spy_module(monkeypatch)
    records, _ = run_repinv("precision=bf16", "steps=6", "log_every=5", "logger=none")
    module = seen["module"]
    assert next(module.stepper.net.parameters()).dtype == torch.bfloat16, "the steps ran through the bf16 copy"
    view = module.canvas.view().detach().float()
    with torch.no_grad():
        loss, stats = module.objective(module.net, module.normalize(view))
    assert [r["loss"] for r in records] == pytest.approx(loss.tolist(), rel=1e-5)
    assert [r["output_l2"] for r in records] == pytest.approx(stats["output_l2"].tolist(), rel=1e-5)
    assert [r["psnr"] for r in records] == pytest.approx(psnr(view, module.objective.reference).tolist(), abs=1e-4)


# -- a figure's CSV and the W&B results table ---------------------------------------------------
@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """A tiny run with the CSV and W&B loggers, two images at two layers."""
    from repinv.engine.pipeline import run

    out = tmp_path_factory.mktemp("logged")
    overrides = ["steps=8", "log_every=4", "layers=[0,patch_embed]", "image=[chelsea,astronaut]", "logger=default"]
    run(compose_cfg([*TINY, *overrides], out))
    return out


NUMBERS = ("loss", "psnr", "ssim", "input_l2", "output_l2", "noise_shift_l2")


def test_figure_csv_holds_each_runs_metrics_json_numbers(logged_run, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import figlib

    panel = figlib.Panel("untrained", [])
    _, table = figlib.assemble("fig", "fig", [panel], {"untrained": ("finished", logged_run, "untrained")}, tmp_path)
    rows, records = list(csv.DictReader(open(table))), read_metrics(logged_run)
    assert [(r["image"], r["layer"]) for r in rows] == [(r["image"], r["layer"]) for r in records] and len(rows) == 4
    for row, record in zip(rows, records):
        assert {k: float(row[k]) for k in NUMBERS} == {k: pytest.approx(record[k], rel=1e-9) for k in NUMBERS}
        assert row["accurate"] == str(record["accurate"]) and row["panel"] == "untrained"


def test_wandb_results_table_holds_the_metrics_json_records(logged_run):
    [run] = wandb_reader.find_runs(logged_run)
    [ref] = [h["results"] for h in wandb_reader.history(run) if "results" in h]
    table = json.loads((run.parent / "files" / ref["path"]).read_text())
    records = read_metrics(logged_run)
    assert len(table["data"]) == len(records) == 4
    for row, record in zip(table["data"], records):
        logged = dict(zip(table["columns"], row))
        assert (logged["image"], logged["layer"]) == (record["image"], record["layer"])
        assert {k: logged[k] for k in NUMBERS} == {k: pytest.approx(record[k], rel=1e-9) for k in NUMBERS}


def test_wandb_results_table_does_not_depend_on_the_callback_order(tmp_path, monkeypatch):
    """With the callbacks in reverse order (the table's before the result files'), the table still holds every record."""
    from repinv.engine import pipeline

    fit = pipeline.fit

    def reversed_fit(trainer, *args):
        trainer.callbacks.reverse()
        fit(trainer, *args)

    monkeypatch.setattr(pipeline, "fit", reversed_fit)
    out = tmp_path / "reversed"
    pipeline.run(compose_cfg([*TINY, "steps=4", "log_every=2", "logger=default"], out))
    [run] = wandb_reader.find_runs(out)
    [ref] = [h["results"] for h in wandb_reader.history(run) if "results" in h]
    table = json.loads((run.parent / "files" / ref["path"]).read_text())
    records = read_metrics(out)
    assert len(table["data"]) == len(records) == 2
    for row, record in zip(table["data"], records):
        logged = dict(zip(table["columns"], row))
        assert (logged["layer"], logged["loss"]) == (record["layer"], pytest.approx(record["loss"], rel=1e-9))
