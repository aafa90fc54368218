"""The recipe study script: runs each recipe through the CLI and tabulates PSNR/SSIM against steps."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO


def _study(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "recipes.py"), "--smoke", "--out", str(tmp_path), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "recipes.csv") as f:
        rows = list(csv.DictReader(f))
    assert Image.open(tmp_path / "recipes.png").size[0] > 200
    return rows


def _check(rows, recipes, layers):
    assert sorted((r["recipe"], r["model"], r["layer"]) for r in rows) == sorted(
        (recipe, model, layer) for recipe in recipes for model, layer in layers)
    for r in rows:
        assert all(5 < float(r[f"psnr@{s}"]) < 60 and 0 < float(r[f"ssim@{s}"]) <= 1 for s in (5, 10, 20)), r
    for model, layer in layers:
        study = [r for r in rows if r["recipe"].startswith("study") and (r["model"], r["layer"]) == (model, layer)]
        best = max(study, key=lambda r: float(r["psnr@20"]))
        assert float(best["study_best_psnr"]) == float(best["psnr@20"]) and best["steps_to_study_best"] == "20"


@pytest.mark.slow
def test_smoke_writes_a_row_per_recipe_and_layer_and_the_plot(tmp_path):
    recipes = ["study-decay", "study-constant", "adam-pyramid-blur"]
    rows = _study(tmp_path, "--recipes", *recipes, "--models", "vit_tiny", "--jobs", "2")
    _check(rows, recipes, [("vit_tiny", "patch_embed"), ("vit_tiny", "L1")])


@pytest.mark.slow
def test_full_smoke_covers_every_recipe_model_and_layer(tmp_path):
    """Every run in the study's own process (--jobs 1): the test above covers --jobs 2."""
    sys.path.insert(0, str(REPO / "scripts"))
    from recipes import RECIPES

    layers = [("vit_tiny", "patch_embed"), ("vit_tiny", "L1"), ("resnet_tiny", "L0"), ("resnet_tiny", "L1"),
              ("mixer_tiny_noln", "L1")]
    _check(_study(tmp_path, "--jobs", "1"), list(RECIPES), layers)


def test_each_recipe_keeps_one_colour_in_every_panel_and_the_key_names_every_recipe():
    sys.path.insert(0, str(REPO / "scripts"))
    from recipes import PSNR, figure

    curve = {PSNR: {0: 10.0, 10: 20.0}}
    results = {("a", "net"): {"L0": curve, "L1": curve}, ("b", "net"): {"L1": curve}, ("c", "net"): {"L0": curve, "L1": curve}}
    fig = figure(results)
    colours = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert colours == {"a": {"C0"}, "b": {"C1"}, "c": {"C2"}}
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert [t.get_text() for t in legends[0].get_texts()] == ["a", "b", "c"]


def test_a_network_whose_study_recipes_all_failed_is_answered_without_a_goal():
    """No study recipe's run finished at a layer: the other recipes' rows have no goal, and the answer says so."""
    sys.path.insert(0, str(REPO / "scripts"))
    from recipes import PSNR, answer, table

    results = {("fast", "net"): {"L0": {PSNR: {0: 10.0, 10: 20.0}, "ssim": {0: 0.1, 10: 0.2}}}}
    lines = answer(table(results, [10], studied=("study",)), 10)
    assert lines[0].startswith("No recipe reaches")
    assert "net L0 (never: 20.0 dB at step 10 vs no goal (no study recipe's run finished))" in lines[2]


@pytest.mark.parametrize("args,needle", [
    (["optimizer=adam"], "optimizer=adam: the recipe study sets optimizer in its runs, per recipe, model and seed, and an "
                         "extra override would replace it in every run; leave it out"),
    (["regularizer=tv"], "priors=tv: the recipe study sets priors in its runs"),
    (["steps=4"], "steps=4: the recipe study sets steps in its runs, per recipe, model and seed, and an extra override "
                  "would replace it in every run; use --steps instead"),
    (["model=vit_tiny"], "model=vit_tiny: the recipe study sets model"),
    (["--ledger", "{tmp}/ledger", "param=fourier"], "param=fourier: the recipe study sets param in its runs"),
    (["optimizer=adam", "--recipes", "study-decay"], "optimizer=adam: the recipe study sets optimizer in its runs"),
    (["regularizer=tv", "--recipes", "study-decay", "study-constant"], "priors=tv: the recipe study sets priors"),
    (["--ledger", "{tmp}/ledger", "param=fourier", "--recipes", "study-decay"], "param=fourier: the recipe study sets param"),
    (["--ledger", "{tmp}/ledger", "seed=3"], "seed=3: the ledger sets seed in its runs, per claim, seed and recipe, and "
                                             "an extra override would replace it in every run; leave it out."),
])
def test_an_extra_override_of_what_a_recipe_sets_is_refused_before_any_run(args, needle, tmp_path, capsys, monkeypatch):
    """As the last value it would win in every run, so every recipe (or model) would be the same run; a key of a recipe
    left out of --recipes too, or the study recipe would run it under its own name."""
    sys.path.insert(0, str(REPO / "scripts"))
    import recipes

    import repinv.study

    monkeypatch.setattr(repinv.study, "execute", lambda *a, **k: pytest.fail("a run started before the overrides were checked"))
    smoke = [] if "--ledger" in args else ["--smoke"]
    code = recipes.main([*smoke, "--out", str(tmp_path / "out"), *(a.format(tmp=tmp_path) for a in args)])
    err = capsys.readouterr().err
    assert code == 2 and needle in " ".join(err.split()), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("within", ["0", "-5", "1.5"])
def test_a_goal_of_no_steps_is_refused_before_any_run(within, tmp_path, capsys, monkeypatch):
    """--within 0 read as the default and --within -5 answered 'within -5 steps': both are refused."""
    sys.path.insert(0, str(REPO / "scripts"))
    import recipes

    import repinv.study

    monkeypatch.setattr(repinv.study, "execute", lambda *a, **k: pytest.fail("a run started before the arguments were checked"))
    with pytest.raises(SystemExit) as stop:
        recipes.main(["--ledger", str(tmp_path / "ledger"), "--within", within])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument --within: {within} is not a number of steps" in err, err
