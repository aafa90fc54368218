"""The study runner is the one launcher: the ledger, the figures, the recipe study and the diagnostics share its runs."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
from functools import partial
from pathlib import Path

import pytest

from conftest import REPO, spelled
from repinv import study
from repinv.claims import cli
from repinv.claims.ledger import BUDGETS, DEFAULT_RECIPE, Budget, networks, plan
from repinv.claims.registry import CLAIMS
from repinv.reporting.results import FINISHED, METRICS_FILE, all_finished
from repinv.sources import Weights

TOOLS = ["scripts/figlib.py", "scripts/recipes.py", "scripts/diagnostics.py",
         *(str(p.relative_to(REPO)) for p in (REPO / "src" / "repinv" / "claims").glob("*.py"))]
LAUNCHING = re.compile(r"subprocess|\"-m\", \"repinv\"|hydra\.run\.dir|repinv\.run\(|pipeline import run\b")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _counted(monkeypatch) -> list[list[str]]:
    """Every `repinv` launch the runner makes from now on, by its arguments."""
    launches, launch = [], study.launch
    monkeypatch.setattr(study, "launch", lambda args, log, in_process: launches.append(args) or launch(args, log, in_process))
    return launches


def test_no_tool_launches_repinv_but_the_runner():
    sources = {tool: (REPO / tool).read_text() for tool in TOOLS}
    assert len(sources) >= 8
    assert {tool for tool, text in sources.items() if LAUNCHING.search(text)} == set()
    assert LAUNCHING.search((REPO / "src/repinv/study.py").read_text())


@pytest.mark.parametrize("bf16", [True, False], ids=["native-bf16", "no-native-bf16"])
def test_a_ledger_read_on_another_cpu_plans_the_runs_it_holds(tmp_path, monkeypatch, bf16):
    budget = BUDGETS["cpu"]
    timm = [c for c in CLAIMS if c.source in budget.sources]
    planned = lambda: plan(timm, budget, tmp_path, budget.seeds, budget.images, None, Weights().overrides, [])  # noqa: E731
    monkeypatch.setattr("repinv.models.packed.native_bf16", lambda: bf16)
    made = planned()
    run = next(iter(made.runs.values()))
    run.folder.mkdir(parents=True)
    (run.folder / study.COMMAND).write_text("\n".join(run.overrides))
    monkeypatch.setattr("repinv.models.packed.native_bf16", lambda: not bf16)
    assert list(planned().runs) == list(made.runs), "the ledger keeps the precision its runs were made in"


@pytest.mark.parametrize("bf16", [True, False], ids=["native-bf16", "no-native-bf16"])
def test_cpu_budget_plans_the_study_models_at_1500_steps_in_12_runs(tmp_path, monkeypatch, bf16):
    monkeypatch.setattr("repinv.models.packed.native_bf16", lambda: bf16)
    budget = BUDGETS["cpu"]
    timm = [c for c in CLAIMS if c.source in budget.sources]
    p = plan(timm, budget, tmp_path, budget.seeds, budget.images, None, Weights().overrides, [])
    assert len(p.runs) == 12 and sum(int(study.value(o, "steps")) for o in p.runs) == 12 * 1500
    for o in p.runs:
        assert study.value(o, "image") == "['chelsea']" and study.value(o, "seed") == "0"
        assert (study.value(o, "precision") == "bf16") is bf16
    layers = {(cid, recipe): {name: study.value(runs[0][1].overrides, "layers") for name, runs in conds.items()}
              for (cid, recipe), conds in p.conditions.items()}
    constant = "constant lr=0.1, no input norm"
    for recipe in (DEFAULT_RECIPE, constant):
        assert layers[("vit-untrained-constant-depth", recipe)] == {"vit": "[patch_embed,0,2,5,8,11]"}
        assert layers[("vit-first-below-resnet", recipe)] == {"resnet": "[0,1,2,3,4]", "vit": "[patch_embed,0,2,5,8,11]"}
        assert layers[("resnet-untrained-loses-input", recipe)] == {"resnet": "[0,1,2,3,4]"}
        assert layers[("mixer-layernorm", recipe)] == {"layernorm": "[0,2]", "no_layernorm": "[0,2]"}
    assert layers[("vit-l16-untrained-input-conv", DEFAULT_RECIPE)] == {"vit": "[patch_embed]"}
    assert layers[("mixer-patch8", DEFAULT_RECIPE)] == {"patch8": "[0,2]", "patch16": "[0,2]"}
    assert layers[("resnet-conv1-3-as-vit", DEFAULT_RECIPE)] == {"conv1_3": "[stem.maps]", "vit": "[patch_embed,0,2,5,8,11]"}
    assert {recipe for _, recipe in p.conditions} == {DEFAULT_RECIPE, constant}
    assert {"vit-l16-first16", "trained-input-105k"} <= p.out_of_budget and "mixer-patch8" not in p.out_of_budget
    assert not {c.id for c in timm if c.trained} & {cid for cid, _ in p.conditions}, "no weights given: no trained runs"


def _signal_in_run(monkeypatch, run: int, step: int):
    """SIGTERM this process during step `step` of the `run`-th inversion from now on, as SLURM or Ctrl+C would."""
    import repinv.engine.pipeline as pipeline

    started = []

    class Signalled(pipeline.ImageOptimization):
        def on_train_start(self):
            started.append(self)
            return super().on_train_start()

        def training_step(self, batch, batch_idx):
            if len(started) == run and self.global_step == step:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().training_step(batch, batch_idx)

    monkeypatch.setattr(pipeline, "ImageOptimization", Signalled)


def test_interrupted_ledger_resumes_without_rerunning_finished_runs(tmp_path, monkeypatch, capsys):
    args = ["--budget", "quick", "--seeds", "1", "--claims", "vit-untrained-constant-depth", "--sources", "timm", "--lrs", "0.5",
            "--steps", "6", "--out", str(tmp_path), "logger=none", "checkpoint_every=0"]
    import repinv.engine.pipeline as pipeline

    plain = pipeline.ImageOptimization
    _signal_in_run(monkeypatch, run=2, step=3)
    with pytest.raises(SystemExit):
        cli.main(args)
    folders = sorted(tmp_path.glob("runs/*/"))
    assert [all_finished(f) for f in folders] == [True, False] or [all_finished(f) for f in folders] == [False, True]
    monkeypatch.setattr(pipeline, "ImageOptimization", plain)
    launches = _counted(monkeypatch)
    assert cli.main(args) == 0
    assert len(launches) == 3, "4 runs: the finished one is reused, the interrupted one resumes, two are new"
    assert sum("resume=last" in a for a in launches) == 1
    resumed = next(a for a in launches if "resume=last" in a)
    assert [r["steps"] for r in json.loads((Path(resumed[-1].split("=", 1)[1].strip("'")) / "metrics.json").read_text())] == [
        6
    ] * 3
    assert {r["verdict"] for r in csv.DictReader(open(tmp_path / "claims.csv"))} <= {"holds", "fails"}
    launches.clear()
    assert cli.main(args) == 0 and launches == [], "a finished ledger runs nothing again"


def test_a_run_that_finished_but_lost_its_command_file_is_read_not_launched_again(tmp_path, monkeypatch):
    """Stopped between its last step and the runner's command file: the next call reads the finished run (repinv
    would refuse to resume it) and writes the file."""
    run = study.run_for(tmp_path, ["model=vit_tiny", "steps=6"])
    run.folder.mkdir(parents=True)
    records = [{"layer": "L0", "status": FINISHED, "steps": 6}]
    (run.folder / METRICS_FILE).write_text(json.dumps(records))
    monkeypatch.setattr(study, "launch", lambda *args: pytest.fail("a finished run was launched again"))
    made = study.make(run)
    assert made.ok and made.records == records and study.recorded(tmp_path) == [run.overrides]


def test_an_override_added_with_a_plus_sets_the_same_key_as_one_without():
    """Hydra's `+k=v` and `k=v` set one key: the last wins, so both name one run (one folder, one value)."""
    assert study.canonical(["+steps=6", "model=vit_tiny", "steps=8"]) == ("model=vit_tiny", "steps=8")
    assert study.value(["steps=8", "++steps=6"], "steps") == "6"
    assert study.run_for(Path("x"), ["+steps=6", "steps=8"]).folder == study.run_for(Path("x"), ["steps=8"]).folder


TINY = Budget("quick", 6, ("chelsea",), (0.5,), seeds=1, norms=(False,), sources=("timm",))
EXTRA = ["logger=csv", "log_every=2", "checkpoint_every=0"]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    """A tiny quick-budget ledger (one seed, the default and one constant-lr recipe, 6 steps), made once for the tests here."""
    root = tmp_path_factory.mktemp("ledger")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(BUDGETS, "quick", TINY)
        assert cli.main(["--budget", "quick", "--out", str(root), *EXTRA]) == 0
        yield root


def _final_psnr(nets) -> dict[tuple[str, str, str], float]:
    """(network, recipe, layer) -> the ledger run's final PSNR, from its metrics.json."""
    return {
        (net, recipe, r["layer"]): r["psnr"]
        for net, by in nets.items()
        for recipe, runs in by.items()
        for r in json.loads((runs[0].folder / "metrics.json").read_text())
    }


@pytest.mark.parametrize("script", ["recipes", "diagnostics"])
def test_a_study_of_a_folder_without_the_ledgers_runs_is_refused(script, tmp_path, monkeypatch, capsys):
    """A mistyped --ledger, or the wrong --budget, would make every run of a ledger anew: refused, nothing launched."""
    launches = _counted(monkeypatch)
    assert _script(script).main(["--ledger", str(tmp_path / "no-ledger"), "--budget", "quick"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--ledger {tmp_path / 'no-ledger'} holds none of the runs of a ledger made at --budget quick" in err
    assert launches == [] and "Traceback" not in err


@pytest.mark.parametrize("script", ["recipes", "diagnostics"])
def test_a_study_of_networks_the_ledger_lacks_is_refused(script, ledger, monkeypatch, capsys):
    """A name the ledger lacks is refused even beside one it has: it would be left out without a word."""
    launches = _counted(monkeypatch)
    args = ["--ledger", str(ledger), "--budget", "quick", "--out", str(ledger / "none"), *EXTRA,
            "--models", "resnet_tiny", "vit_b_32"]
    assert _script(script).main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--models resnet_tiny vit_b_32: vit_b_32 is not a network of the ledger" in err, err
    assert launches == [] and "Traceback" not in err


def test_diagnostics_of_a_ledger_without_its_reconstruction_images_is_refused_before_any_run(ledger, tmp_path,
                                                                                            monkeypatch, capsys):
    """A committed ledger keeps each run's records, not its PNGs; non-uniqueness needs them: said before runs are made."""
    copied = tmp_path / "committed"
    shutil.copytree(ledger, copied)
    for folder in copied.glob("runs/*/reconstructions"):
        shutil.rmtree(folder)
    launches = _counted(monkeypatch)
    args = ["--ledger", str(copied), "--budget", "quick", "--out", str(copied / "none"), *EXTRA]
    assert _script("diagnostics").main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "hold their records but not their reconstruction PNGs" in err and "Traceback" not in err, err
    assert launches == []


def test_a_recipe_study_of_a_ledger_made_without_csv_logs_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    """Its curves come from each run's CSV log: a ledger made with logger=none has none, said before runs are made."""
    monkeypatch.setitem(BUDGETS, "quick", TINY)
    made = ["--budget", "quick", "--claims", "vit-entry-untrained", "--out", str(tmp_path), "logger=none"]
    assert cli.main(made) == 0
    launches = _counted(monkeypatch)
    code = _script("recipes").main(["--ledger", str(tmp_path), "--budget", "quick", "--steps", "2", "logger=none"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "has no CSV log" in err and "Traceback" not in err and launches == [], err


@pytest.mark.parametrize("args, says", [
    (["--ledger", "{tmp}", "--smoke"], "--smoke with --ledger {tmp}: the ledger's runs set the networks, images and steps, "
                                       "so --smoke (the tiny models) would be ignored"),
    (["--smoke", "--budget", "cpu"], "--budget cpu without --ledger: a ledger's budget and the steps a recipe may take"),
    (["--budget", "quick", "--within", "100"], "--budget quick and --within 100 without --ledger"),
])
def test_a_recipe_study_refuses_options_of_the_other_mode_before_any_run(args, says, tmp_path, monkeypatch, capsys):
    """--smoke is the recipe study's, --budget and --within a ledger's: given to the other, they would be ignored."""
    monkeypatch.setattr(study, "launch", lambda *a: pytest.fail("a run started before the arguments were checked"))
    assert _script("recipes").main([a.format(tmp=tmp_path) for a in [*args, "--out", "{tmp}/out"]]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("recipes.py: error: ") and says.format(tmp=tmp_path) in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_the_diagnostics_of_a_ledger_refuse_an_override_of_what_its_runs_set(ledger, monkeypatch, capsys):
    launches = _counted(monkeypatch)
    assert _script("diagnostics").main(["--ledger", str(ledger), "--budget", "quick", "--out", str(ledger / "d"), "seed=3"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "seed=3: the ledger sets seed in its runs" in err and launches == [] and "Traceback" not in err


def test_recipe_study_from_ledger_runs_only_the_other_recipes(ledger, monkeypatch, capsys):
    nets = networks(ledger, TINY, EXTRA)
    launches = _counted(monkeypatch)
    args = [
        "--ledger",
        str(ledger),
        "--budget",
        "quick",
        "--recipes",
        "adam-pyramid-blur",
        "--steps",
        "4",
        "--within",
        "4",
        *EXTRA,
    ]
    assert _script("recipes").main(args) == 0
    assert len(launches) == len(nets) == 7, "one run per network for the one other recipe; the ledger's are reused"
    assert all("steps=4" in a and "optimizer=adam" in a and "param=pyramid" in a for a in launches)
    rows = list(csv.DictReader(open(ledger / "recipes.csv")))
    final = _final_psnr(nets)
    recipes = {DEFAULT_RECIPE, "constant lr=0.5, no input norm", "adam-pyramid-blur"}
    for net, layer in {(n, layer) for n, _, layer in final}:
        mine = {r["recipe"]: r for r in rows if (r["model"], r["layer"]) == (net, layer)}
        assert (
            set(mine) == recipes
            or net.endswith(("patch_size=8", "[patch_embed]", "resnet_stem"))
            and set(mine) == recipes - {"constant lr=0.5, no input norm"}
        )
        goal = max(v for (n, _, la), v in final.items() if (n, la) == (net, layer))
        assert all(float(r["study_best_psnr"]) == pytest.approx(goal) for r in mine.values())
        assert float(mine[DEFAULT_RECIPE]["psnr@6"]) == pytest.approx(final[(net, DEFAULT_RECIPE, layer)])
        fast = mine["adam-pyramid-blur"]
        assert fast["psnr@6"] == "", "the other recipes run --steps 4"
        if fast["steps_to_study_best"] == "":
            assert float(fast["psnr@4"]) < goal
        else:
            assert int(fast["steps_to_study_best"]) <= 4
    md = (ledger / "recipes.md").read_text()
    assert "within 4 steps at every layer of every network" in md and "- adam-pyramid-blur:" in md
    assert (ledger / "recipes.png").stat().st_size > 10_000
    launches.clear()
    assert _script("recipes").main(args) == 0 and launches == [], "a second call reuses every run"


@pytest.mark.slow
def test_diagnostics_from_ledger_runs_one_extra_seed_per_network(ledger, monkeypatch, capsys):
    nets = networks(ledger, TINY, EXTRA)
    launches = _counted(monkeypatch)
    out = ledger / "diagnostics"
    args = ["--ledger", str(ledger), "--budget", "quick", "--out", str(out), "--extra-steps", "4", *EXTRA]
    _script("diagnostics").main(args)
    assert len(launches) == len(nets), "one extra inversion per network; the ledger's runs are reused"
    assert all("steps=4" in a and "model.seed=0" in a and "seed=1" in a for a in launches)
    rows = list(csv.DictReader(open(out / "diagnostics.csv")))
    final = _final_psnr(nets)
    assert sorted((r["model"], r["layer"]) for r in rows) == sorted(
        (n, la) for n, recipe, la in final if recipe == DEFAULT_RECIPE
    )
    for r in rows:
        assert float(r["inversion_psnr"]) == pytest.approx(final[(r["model"], DEFAULT_RECIPE, r["layer"])])
        assert r["nonunique_k"] == "2" and float(r["nonunique_input_l2"]) > 0 and float(r["stable_rank"]) > 0
    corr = {r["diagnostic"]: r for r in csv.DictReader(open(out / "correlations.csv"))}
    assert all(int(c["n"]) == len(rows) and -1 <= float(c["spearman"]) <= 1 for c in corr.values())
    assert (out / "diagnostics.png").stat().st_size > 10_000
    launches.clear()
    _script("diagnostics").main(args)
    assert launches == [], "a second call reuses the extra inversions and the spectra"


def test_ledger_non_uniqueness_compares_inversions_of_one_network_only(tmp_path, monkeypatch):
    """Each ledger seed has weights of its own; the extra seeds keep the first's. Only inversions of the same weights
    measure non-uniqueness, while every ledger seed counts for the inversion's PSNR."""
    import torch

    diagnostics = _script("diagnostics")

    def run(seed: int, psnr: float) -> study.Run:
        record = {"layer": "L0", "image": "chelsea", "psnr": psnr, "accurate": True, "seconds_per_step": 1.0, "steps": 2}
        return study.Run((f"seed={seed}",), tmp_path / str(seed), FINISHED, [record])

    first, second, extra = run(0, 10.0), run(1, 20.0), run(2, 12.0)
    pixels = {"0": 0.5, "1": 0.0, "2": 0.6}  # by seed: the second network's inversion is far from the others
    monkeypatch.setattr(diagnostics, "spectrum_of", lambda base, root: [{"layer": "L0", "image": "chelsea"}])
    monkeypatch.setattr(diagnostics, "reconstruction", lambda r, record: torch.full((3, 4, 4), pixels[r.folder.name]))
    [row] = diagnostics.network_records("net", [first, second], [extra], tmp_path)
    assert (row["nonunique_k"], row["nonunique_pairs"]) == (2, 1)
    assert row["nonunique_input_l2"] == pytest.approx(0.1 * 48 ** 0.5)
    assert row["inversion_psnr"] == pytest.approx(15.0)


def test_a_run_folders_files_and_statuses_are_named_in_reporting_alone():
    """The study tools read a run folder through repinv.reporting (`read_records`, `all_finished`, `FINISHED`,
    `read_filters`), never by spelling its file names or a record's status, so renaming one there renames it for
    every reader."""
    names = {"metrics.json", "filters.json", "finished", "interrupted"}
    own = REPO / "src" / "repinv" / "reporting" / "results.py"
    readers = [p for p in [*(REPO / "src" / "repinv").rglob("*.py"), *(REPO / "scripts").glob("*.py")] if p != own]
    assert [hit for p in readers for hit in spelled(p, names, whole=True)] == []


@pytest.mark.parametrize("script, args", [
    ("recipes", ["--smoke", "--recipes", "study-decay"]),
    ("diagnostics", ["--smoke"]),
    ("fig_vit_entry_representations", ["--smoke"]),
])
def test_an_out_folder_inside_a_file_is_refused_before_any_run(script, args, tmp_path, monkeypatch, capsys):
    """It failed only when the first run's folder was made, with a traceback."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))  # the figure scripts import figlib from there
    launches = _counted(monkeypatch)
    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "notes.txt" / "out"
    module = _script(script)
    main = module.main if script != "fig_vit_entry_representations" else \
        partial(module.main, "vit_entry_representations", "entry", "fig_vit_entry", module.PANELS)
    assert main([*args, "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--out {out} is inside {tmp_path / 'notes.txt'}, which is a file" in err, err
    assert launches == [] and "Traceback" not in err
