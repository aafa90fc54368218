"""Multirun sweeps through the real CLI, the sweep summary, sharded runs and W&B review."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

import wandb_reader
from conftest import REPO, TINY, compose_cfg, read_metrics
from repinv.reporting.summary import SWEEP_ID

FAST = ["model=vit_tiny", "optimizer.lr=1.0", "steps=12", "log_every=4", "image_every=6"]


def repinv(*args: str, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """The `repinv` command in a subprocess (multirun needs the real CLI), with this test's environment."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "repinv", *args], cwd=cwd or REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _check_sweep(sweep, layers):
    """Both job folders, the summary files and one offline W&B run with its table per job."""
    for job, layer in enumerate(layers):
        records = read_metrics(sweep / str(job))
        assert [r["layer"] for r in records] == [layer] and records[0]["status"] == "finished"
        runs = wandb_reader.find_runs(sweep / str(job))
        assert len(runs) == 1, f"job {job} must have exactly one W&B run, found {runs}"
        info = wandb_reader.run_info(runs[0])
        assert info["group"] == f"{sweep.name}-{(sweep / SWEEP_ID).read_text()[:8]}" and info["job_type"] == "layer"
        assert {"vit_tiny", "untrained"} <= set(info["tags"])
        tables = [h["results"] for h in wandb_reader.history(runs[0]) if "results" in h]
        assert tables and tables[0]["_type"] == "table-file" and tables[0]["nrows"] == 1
        table = json.loads((runs[0].parent / "files" / tables[0]["path"]).read_text())
        assert "psnr" in table["columns"] and "reconstruction" in table["columns"]
    rows = _csv(sweep / "summary.csv")
    assert [r["layer"] for r in rows] == layers and all(r["status"] == "finished" for r in rows)
    assert all(float(r["psnr"]) > 5 for r in rows)
    assert "2 jobs, 0 failed" in (sweep / "summary.md").read_text()
    grid = Image.open(sweep / "summary.png")
    assert grid.size[0] > 2 * grid.size[1], "summary.png: one row, the target and two layer columns"
    assert np.asarray(Image.open(sweep / "summary_metrics.png")).std() > 5


@pytest.mark.slow
def test_basic_multirun_two_jobs_summary_and_wandb(tmp_path):
    sweep = tmp_path / "sweep"
    res = repinv("-m", *FAST, "layers=0,patch_embed", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    _check_sweep(sweep, ["L0", "patch_embed"])
    assert f"wandb sync {sweep}" in res.stdout


@pytest.mark.slow
def test_joblib_multirun_two_jobs_summary_and_wandb(tmp_path):
    sweep = tmp_path / "sweep"
    res = repinv("-m", "hydra/launcher=joblib", *FAST, "layers=0,patch_embed", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Joblib.Parallel" in res.stdout + res.stderr, "the joblib launcher must have run the jobs"
    _check_sweep(sweep, ["L0", "patch_embed"])


@pytest.mark.slow
def test_sweep_with_a_failing_job_finishes_the_others_and_marks_it(tmp_path):
    sweep = tmp_path / "sweep"
    res = repinv("-m", *FAST, "logger=none", "layers=0,no_such_layer,patch_embed", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 1, "a sweep with a failed job exits 1 after its summary"
    assert read_metrics(sweep / "0")[0]["status"] == read_metrics(sweep / "2")[0]["status"] == "finished"
    assert "no_such_layer" in (sweep / "1" / "error.txt").read_text()
    rows = {r["job"]: r for r in _csv(sweep / "summary.csv")}
    assert rows["1"]["status"] == "failed" and "no_such_layer" in rows["1"]["error"]
    assert rows["0"]["status"] == rows["2"]["status"] == "finished"
    assert "3 jobs, 1 failed" in (sweep / "summary.md").read_text()
    assert "job 1" in res.stdout and "failed" in res.stdout


@pytest.mark.slow
def test_a_sweep_in_the_folder_of_an_earlier_one_summarises_its_own_jobs_only(tmp_path):
    """The earlier sweep's results stay on disk, but the later sweep's summary neither counts its extra job nor takes
    its numbers for a job of the later sweep that failed before writing any."""
    sweep, quick = tmp_path / "sweep", ["model=vit_tiny", "steps=2", "logger=none", "layers=[0]"]
    assert repinv("-m", *quick, "seed=0,1", f"hydra.sweep.dir={sweep}").returncode == 0
    res = repinv("-m", *quick, "seed=0", "optimizer.lr=-0.05", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 1, "the later sweep's only job failed"
    assert read_metrics(sweep / "1")[0]["status"] == "finished", "the earlier sweep's results are kept"
    [row] = _csv(sweep / "summary.csv")
    assert row["job"] == "0" and row["status"] == "failed" and "optimizer.lr=-0.05" in row["error"]
    assert not row.get("psnr"), "no number of the earlier run"
    assert "1 jobs, 1 failed" in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_a_sweep_run_again_in_its_folder_groups_and_uploads_its_own_wandb_runs(tmp_path):
    """The earlier sweep's offline W&B runs stay in the job folders, but the later sweep's runs form a W&B group of
    their own, and the `wandb sync` command it prints names those runs only."""
    sweep, quick = tmp_path / "sweep", ["model=vit_tiny", "steps=2", "layers=[0]", "logger=wandb"]
    assert repinv("-m", *quick, "seed=0,1", f"hydra.sweep.dir={sweep}").returncode == 0
    res = repinv("-m", *quick, "seed=2", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    groups = {run.parent: wandb_reader.run_info(run)["group"] for run in wandb_reader.find_runs(sweep)}
    later = f"{sweep.name}-{(sweep / SWEEP_ID).read_text()[:8]}"
    assert sorted(groups.values()).count(later) == 1 and len(set(groups.values())) == 2, groups
    [command] = [line.split("`")[1] for line in res.stdout.splitlines() if "wandb sync" in line]
    assert command.split()[2:] == [str(run) for run, group in groups.items() if group == later]


@pytest.mark.slow
def test_a_job_refused_as_bad_input_fails_in_the_columns_it_planned(tmp_path):
    """A job the run refuses before it starts still names the layers it would have inverted: the summary shows them
    failed, not one unnamed column."""
    sweep = tmp_path / "sweep"
    res = repinv("-m", "model=vit_tiny", "layers=[0,1],patch_embed", "optimizer.lr=-1", "steps=2", "logger=none",
                 f"hydra.sweep.dir={sweep}")
    assert res.returncode == 1, "a sweep whose jobs failed exits 1"
    cells = [(r["job"], r["column"], r["status"]) for r in _csv(sweep / "summary.csv")]
    assert cells == [("0", "L0", "failed"), ("0", "L1", "failed"), ("1", "patch_embed", "failed")]


@pytest.mark.slow
def test_a_failed_job_names_the_last_layer_as_a_finished_one_does(tmp_path):
    """layers=-1: the job that failed plans the column the finished job's records name (the stem surgery adds a layer
    in front of the two blocks, so -1 is L2), and the summary holds that one column."""
    sweep = tmp_path / "sweep"
    res = repinv("-m", "model=vit_tiny", "surgery=resnet_stem", "layers=-1", "optimizer.lr=0.05,-1", "steps=2",
                 "logger=none", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 1, "a sweep with a failed job exits 1"
    cells = [(r["job"], r["column"], r["status"]) for r in _csv(sweep / "summary.csv")]
    assert cells == [("0", "L2", "finished"), ("1", "L2", "failed")]


def test_a_layer_named_from_the_end_is_planned_by_the_depth_the_caller_counts(tmp_path):
    """The plan counts back from the depth it is handed (the job's model after its surgery: the stem adds a layer in
    front of vit_tiny's two blocks) and asks for it only when a layer is named from the end."""
    from conftest import compose_cfg
    from repinv.models.build import depth
    from repinv.objectives import LayerInversion

    job = compose_cfg(["model=vit_tiny", "surgery=resnet_stem", "layers=[-1,0,patch_embed]"], tmp_path)
    assert depth(job) == 3
    planned = LayerInversion.plan(job.objective, lambda: depth(job))
    assert [r["column"] for r in planned] == ["L2", "L0", "patch_embed"]
    unasked = LayerInversion.plan(OmegaConf.create({"layers": [1]}), lambda: pytest.fail("the model was built"))
    assert unasked == [{"layer": "L1", "column": "L1"}]


def test_summary_marks_crashed_and_unfinished_jobs(run_repinv, tmp_path):
    """Jobs that crashed (status crashed, or no metrics.json at all) show as failed, not missing."""
    from repinv.reporting.summary import main

    sweep = tmp_path
    for job, layer in enumerate(["0", "patch_embed"]):
        run_repinv(f"layers={layer}", "logger=none", "steps=5", name=str(job))
        (sweep / str(job) / ".hydra").mkdir(exist_ok=True)  # the run writes it; a sweep's overrides replace its own
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(f"- model=vit_tiny\n- layers={layer}\n- seed={job}\n")
    records = read_metrics(sweep / "1")
    (sweep / "1" / "metrics.json").write_text(json.dumps([{**r, "status": "crashed"} for r in records]))
    (sweep / "2" / ".hydra").mkdir(parents=True)
    (sweep / "2" / ".hydra" / "overrides.yaml").write_text("- model=vit_tiny\n- layers=1\n- seed=2\n")
    (sweep / "2" / "config.yaml").write_text(  # as the run writes it once its settings are accepted
        "layers: 1\nobjective:\n  _target_: repinv.objectives.layer.LayerInversion\n  layers: 1\n")
    assert main([str(sweep)]) == 1
    rows = {r["job"]: r for r in _csv(sweep / "summary.csv")}
    assert rows["0"]["status"] == "finished" and rows["0"]["condition"] == "seed=0"
    assert rows["1"]["status"] == "crashed"
    assert rows["2"]["status"] == "failed" and rows["2"]["layer"] == "L1" and "no metrics.json" in rows["2"]["error"]
    assert (sweep / "summary.png").is_file() and "3 jobs, 2 failed" in (sweep / "summary.md").read_text()
    assert main([str(sweep / "0" / "reconstructions")]) == 2, "a folder without jobs is an error"


@pytest.mark.parametrize("given", ["missing", "file"])
def test_summary_of_a_folder_that_is_not_there_is_one_line_and_exit_2(given, tmp_path, capsys):
    from repinv.reporting.summary import main

    (tmp_path / "file").write_text("")
    assert main([str(tmp_path / given)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repinv-summary: error: ") and "give the folder of a multirun" in err and "Traceback" not in err


def _fake_job(folder, metrics: str, overrides: str = "- layers=0\n"):
    """A job folder as a run leaves it: Hydra's config and overrides, and metrics.json holding `metrics`."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(overrides)
    (folder / ".hydra" / "config.yaml").write_text("layers: 0\n")
    (folder / "metrics.json").write_text(metrics)


FINISHED_RECORD = json.dumps([{"image": "cat", "column": "L0", "status": "finished", "psnr": 20.0}])


def test_summary_csv_keeps_every_digit(tmp_path):
    """A sweep's CSV holds the records' numbers as they are: differences below 0.01 dB matter."""
    from repinv.reporting.summary import main

    psnr = 12.034185123
    _fake_job(tmp_path / "0", json.dumps([{"image": "cat", "column": "L0", "status": "finished", "psnr": psnr}]))
    assert main([str(tmp_path)]) == 0
    assert float(_csv(tmp_path / "summary.csv")[0]["psnr"]) == psnr


@pytest.mark.parametrize("marks", ["metrics", "hydra"])
def test_summary_of_a_single_run_is_refused_and_writes_nothing_there(marks, tmp_path, capsys):
    from repinv.reporting.summary import main

    run = tmp_path / "run"
    _fake_job(run, FINISHED_RECORD)
    if marks == "hydra":
        (run / "metrics.json").unlink()  # a run that crashed before writing its results
    assert main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repinv-summary: error: ") and "a single run, not a multirun's folder" in " ".join(err.split())
    assert "Traceback" not in err and not list(run.glob("summary*")), "nothing written into the run folder"


def test_hidden_folders_of_a_sweep_folder_are_no_jobs(tmp_path):
    from repinv.reporting.summary import find_jobs

    _fake_job(tmp_path / "0", FINISHED_RECORD)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("layers: 0\n")
    assert [j.path.name for j in find_jobs(tmp_path)] == ["0"]


def test_a_job_whose_metrics_cannot_be_read_fails_alone(tmp_path, capsys):
    """metrics.json that is not JSON, or not a list of records: that job is failed, the others are summarised."""
    from repinv.reporting.summary import main

    for job, metrics in enumerate([FINISHED_RECORD, "{bad", '{"a": 1}', "[1, 2]"]):
        _fake_job(tmp_path / str(job), metrics, f"- layers=0\n- seed={job}\n")
    assert main([str(tmp_path)]) == 1
    rows = {r["job"]: r for r in _csv(tmp_path / "summary.csv")}
    assert rows["0"]["status"] == "finished" and float(rows["0"]["psnr"]) == 20
    for job in "123":
        assert rows[job]["status"] == "failed" and rows[job]["error"].startswith("metrics.json unreadable: ")
    assert "4 jobs, 3 failed" in (tmp_path / "summary.md").read_text() and "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("failed_records", [True, False], ids=["crashed", "no-records"])
def test_a_failed_job_never_covers_a_finished_jobs_cell_of_its_condition(failed_records, tmp_path, monkeypatch):
    """layers=[0,1],[1,2]: two jobs of one condition share column L1; the one that failed leaves the finished
    job's reconstruction and caption in that cell."""
    from repinv.reporting import summary
    from repinv.reporting.results import target_png

    grids = []
    monkeypatch.setattr(summary, "titled_grid", lambda rows, path, **kw: grids.append(rows) or path)
    done, failed = tmp_path / "0", tmp_path / "1"
    picture = np.full((8, 8, 3), 40, dtype=np.uint8)
    for path in (done / "L1.png", target_png(done, "cat")):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(path)
    record = {"image": "cat", "column": "L1", "png": "L1.png", "caption": "20.0 dB"}
    jobs = [summary.Job(done, [], [record]),
            summary.Job(failed, [], [{**record, "column": c} for c in ("L1", "L2")] if failed_records else [],
                        status="crashed")]
    monkeypatch.setattr(summary, "planned_records", lambda path: [{"column": "L1"}, {"column": "L2"}])
    summary.write_grid(jobs, [{"column": "L1"}, {"column": "L2"}], tmp_path)
    [[_, (l1, l1_title), (l2, l2_title)]] = grids[0]
    assert l1_title.endswith("20.0 dB") and l1.mean() < 100, "the finished job's reconstruction"
    assert l2_title.endswith("crashed") and l2.mean() > 200, "the failed job's own column shows it failed"


@pytest.mark.parametrize("objective", [[], ["objective=class", "classes=[1]"], ["objective=feature", "objective.units=[2]"]],
                         ids=["layer", "class", "feature"])
def test_a_sweep_may_optimise_each_number_a_run_records_and_no_other(run_repinv, tmp_path, objective):
    """`optimized_metric` is checked before the run against the numbers the records will hold: those two lists agree."""
    from repinv.engine.pipeline import build_module, score_metric
    from repinv.reporting.callbacks import ResultWriter

    records, _ = run_repinv(*objective, "steps=2")
    _, _, module = build_module(compose_cfg([*TINY, *objective, "steps=2"], tmp_path / "built"))
    names = {k for t in module.objective.targets for k in t}
    numbers = {k for r in records for k, v in r.items() if type(v) in (int, float) and k not in names}
    for name in numbers:
        assert score_metric(OmegaConf.create({"optimized_metric": name}), module) == name
    accepted = {*module.measuring.fields, *ResultWriter.NUMBERS}
    assert all(type(r.get(name)) in (int, float, bool) for r in records for name in accepted)  # none the records lack


def test_score_is_what_optuna_optimises():
    from repinv.reporting.summary import score

    assert score([{"output_l2": 1.0}, {"output_l2": 3.0}, {"output_l2": None}]) == 2.0
    assert score([{"psnr": 20.0}], "psnr") == 20.0
    assert score([{"accurate": True}, {"accurate": False}], "accurate") == 0.5  # the fraction judged accurate
    assert np.isnan(score([]))


def test_job_k_takes_gpu_k_mod_n():
    from repinv.engine.pipeline import job_device

    assert [job_device(k, 3) for k in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_shards_cover_all_targets_in_order():
    from repinv.engine.sharding import shard_bounds
    from repinv.errors import RepinvError

    for total, world in [(3, 2), (4, 2), (7, 3), (2, 2)]:
        bounds = [shard_bounds(total, r, world) for r in range(world)]
        assert [i for a, b in bounds for i in range(a, b)] == list(range(total))
        assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
    with pytest.raises(RepinvError, match="at most 1 devices"):
        shard_bounds(1, 0, 2)


@pytest.mark.slow
@pytest.mark.parametrize("devices,priors", [
    (["trainer.devices=2"], []),
    (["trainer.devices='2'", "trainer.strategy=ddp"], []),
    (["trainer.devices=2"], ["priors=transforms", "priors.jitter.start=0", "priors.jitter.pixels=8"]),
], ids=["devices=2", "strategy=ddp", "random-transforms"])
def test_two_processes_equal_one_process(run_repinv, tmp_path, devices, priors):
    """trainer.devices=2 on the CPU (gloo): each rank optimises its own targets, rank 0 writes them all.
    Lightning's plain DDP (which would average the image's gradients) runs sharded as well. Random per-target
    transforms draw what one process would."""
    layers = "layers=[0,1,patch_embed]"  # 3 targets: shards of 2 and 1
    one, one_dir = run_repinv(layers, "logger=none", *priors, name="one")
    two_dir = tmp_path / "two"
    res = repinv(*TINY, layers, "logger=csv", *priors, *devices, "trainer.accelerator=cpu", f"hydra.run.dir={two_dir}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Starting with 2 processes" in res.stdout + res.stderr
    two = read_metrics(two_dir)
    assert [r["layer"] for r in two] == [r["layer"] for r in one] == ["L0", "L1", "patch_embed"]
    for a, b in zip(one, two):
        for key in ("psnr", "ssim", "output_l2", "input_l2", "loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["layer"], key)
        png_a = np.asarray(Image.open(one_dir / a["png"]), dtype=int)
        png_b = np.asarray(Image.open(two_dir / b["png"]), dtype=int)
        assert np.abs(png_a - png_b).max() <= 1
    header = _csv(two_dir / "csv" / "metrics.csv")[0]
    assert {"psnr/chelsea/L0", "psnr/chelsea/patch_embed"} <= set(header), "rank 0 logs every rank's scalars"


@pytest.mark.slow
def test_optuna_search_minimises_the_mean_output_l2(tmp_path):
    import yaml

    sweep = tmp_path / "sweep"
    res = repinv("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "steps=choice(4,8)", "model=vit_tiny",
                 "layers=[0]", "logger=none", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
    scores = [read_metrics(sweep / str(job))[0]["output_l2"] for job in range(2)]
    assert best == pytest.approx(min(scores), rel=1e-6)
    assert len(_csv(sweep / "summary.csv")) == 2


@pytest.mark.slow
def test_an_optuna_search_goes_on_past_a_failed_trial_and_ends_with_its_summary(tmp_path):
    """A job the run refuses is a failed trial: the search goes on, the summary marks the job failed and the sweep
    exits 1; where every trial failed, the summary is still written, without best values."""
    import yaml

    search = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "steps=choice(2,3)", "model=vit_tiny",
              "layers=[0]", "logger=none"]
    sweep = tmp_path / "some"
    res = repinv(*search, "seed=0", "optimizer.lr=choice(0.05,-1)", f"hydra.sweep.dir={sweep}")  # seed 0 draws both
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    status = {r["job"]: r["status"] for r in _csv(sweep / "summary.csv")}
    assert sorted(status.values()) == ["failed", "finished"]
    [done] = [job for job, s in status.items() if s == "finished"]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
    assert best == pytest.approx(read_metrics(sweep / done)[0]["output_l2"], rel=1e-6)
    none = tmp_path / "none"
    res = repinv(*search, "optimizer.lr=-1", f"hydra.sweep.dir={none}")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "2 jobs, 2 failed" in (none / "summary.md").read_text() and (none / "summary.png").is_file()
    assert not (none / "optimization_results.yaml").exists()


def test_devices_inside_a_local_multirun_are_refused(tmp_path, monkeypatch):
    """Lightning would re-run the whole `-m` command for each extra process: refuse with a clear error."""
    from types import SimpleNamespace

    from hydra.types import RunMode

    import repinv.engine.pipeline as pipeline
    from conftest import compose_cfg
    from repinv.engine.pipeline import trainer_overrides
    from repinv.errors import RepinvError

    cfg = compose_cfg(["trainer.devices=2"], tmp_path)
    assert type(trainer_overrides(cfg)["strategy"]).__name__ == "ShardedDDP"
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.setattr(pipeline, "_hydra", lambda: SimpleNamespace(mode=RunMode.MULTIRUN, job=SimpleNamespace(num=0)))
    with pytest.raises(RepinvError, match="hydra/launcher=slurm"):
        trainer_overrides(cfg)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert type(trainer_overrides(cfg)["strategy"]).__name__ == "ShardedDDP"


def test_a_table_puts_the_named_columns_first_and_the_error_last(tmp_path):
    """Every CSV and markdown table of the tools (sweep summary, ledger, figures, recipes, diagnostics, cost) is
    written by repinv.reporting.tables: named columns first, then the rest in first-seen order, an error last; a `|`
    in a markdown cell stays inside its cell."""
    from repinv.reporting.tables import columns, md_table, write_csv

    rows = [{"b": 1, "error": "no|file", "a": 2}, {"c": 3}]
    assert columns(rows, ["a"]) == ["a", "b", "c", "error"]
    assert md_table(rows, ["a", "error"]) == ["| a | error |", "| --- | --- |", "| 2 | no\\|file |", "|  |  |"]
    with open(write_csv(tmp_path / "t.csv", rows), newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["b", "a", "c", "error"]
        assert list(reader) == [{"b": "1", "a": "2", "c": "", "error": "no|file"}, {"b": "", "a": "", "c": "3", "error": ""}]


def _age(path, seconds: float) -> None:
    """Date `path` back by `seconds`, as if an earlier run had written it."""
    stat = path.stat()
    os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


def test_a_requeued_job_keeps_what_it_wrote_before_the_requeue(tmp_path):
    """The W&B run a job wrote before SLURM requeued it is still its own: `wandb sync` of the sweep names it too."""
    from repinv.reporting.summary import join_sweep, read_job, start_sweep, written_by_jobs

    sweep, job = tmp_path / "sweep", tmp_path / "sweep" / "0"
    start_sweep(sweep)
    join_sweep(sweep, job)
    before = job / "wandb" / "offline-run-1"
    before.mkdir(parents=True)
    _age(job / SWEEP_ID, 20)
    _age(before, 10)
    join_sweep(sweep, job)  # the requeued job starts again
    (job / "wandb" / "offline-run-2").mkdir()
    assert [p.name for p in written_by_jobs([read_job(job)], "wandb/offline-run-*")] == ["offline-run-1", "offline-run-2"]


def test_a_failed_job_plans_its_columns_from_its_own_config_not_an_earlier_runs(tmp_path):
    """A sweep run again in its folder: a job refused before it wrote config.yaml plans the layers it was given, not
    those of the earlier run whose config.yaml is still there."""
    from repinv.reporting.summary import join_sweep, planned_records, start_sweep

    sweep, job = tmp_path / "sweep", tmp_path / "sweep" / "0"
    job.mkdir(parents=True)
    OmegaConf.save(compose_cfg(["model=vit_tiny", "layers=[0]"], job), job / "config.yaml")
    _age(job / "config.yaml", 10)
    start_sweep(sweep)
    join_sweep(sweep, job)
    (job / ".hydra").mkdir()
    OmegaConf.save(compose_cfg(["model=vit_tiny", "layers=[0,1]"], job), job / ".hydra" / "config.yaml")
    assert [r["column"] for r in planned_records(job)] == ["L0", "L1"]


@pytest.mark.slow
def test_a_sweep_stopped_by_a_signal_continues_with_resume_auto_and_keeps_what_finished(tmp_path):
    """SIGTERM in job 1 stops the sweep and names the command that continues it; run again with resume=auto, job 0 is
    kept and job 1 continues from its checkpoint to the image an unbroken run reaches (job 0's); once more, both are
    kept as they are, and summarised as the conditions they ran (resume=auto names none)."""
    sweep = tmp_path / "sweep"
    stop = ["+priors.stop._target_=test_multiprocess.OnRank", "+priors.stop.rank=0", "+priors.stop.step=1000,6",
            "+priors.stop.signum=15"]  # job 1 signals itself at step 6, job 0 never
    args = ["-m", *FAST, "logger=csv", "layers=[0]", "checkpoint_every=4", *stop, f"hydra.sweep.dir={sweep}"]
    first = repinv(*args, cwd=REPO / "tests")
    assert first.returncode == 143, first.stderr[-3000:]
    assert f"continue the sweep with the same command and resume=auto hydra.sweep.dir={sweep}" in first.stderr
    second = repinv(*args, "resume=auto", cwd=REPO / "tests")
    assert second.returncode == 0, second.stderr[-3000:]
    stopped, plain = (read_metrics(sweep / job)[0] for job in "10")
    assert stopped["status"] == plain["status"] == "finished" and stopped["psnr"] == plain["psnr"]
    before = [(sweep / job / "metrics.json").read_bytes() for job in "01"]
    third = repinv(*args, "resume=auto", cwd=REPO / "tests")
    assert third.returncode == 0, third.stderr[-3000:]
    assert [(sweep / job / "metrics.json").read_bytes() for job in "01"] == before
    assert [(r["job"], r["status"], r["condition"]) for r in _csv(sweep / "summary.csv")] == \
        [("0", "finished", "priors.stop.step=1000"), ("1", "finished", "priors.stop.step=6")]


@pytest.mark.slow
def test_a_sweep_whose_job_process_is_killed_ends_with_its_summary(tmp_path):
    """A job's process that dies at once (here it exits 9 as its callbacks are built, as an OOM kill would end it)
    fails joblib's pool: one paragraph instead of joblib's traceback, and the summary names the job failed. (One job:
    with two, the pool may end the other before it starts.)"""
    sweep = tmp_path / "sweep"
    res = repinv("-m", "hydra/launcher=joblib", "model=vit_tiny", "layers=[0]", "steps=2", "logger=none", "seed=0",
                 "+callbacks.die._target_=os._exit", "+callbacks.die._args_=[9]", f"hydra.sweep.dir={sweep}")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "its launcher failed (TerminatedWorkerError" in " ".join(res.stderr.split())
    assert [(r["job"], r["status"]) for r in _csv(sweep / "summary.csv")] == [("0", "failed")]


@pytest.mark.slow
def test_a_sweep_whose_launcher_fails_summarises_every_planned_job_under_its_condition(tmp_path):
    """Each job process dies as its callbacks are built and breaks joblib's pool of two, so job 2 never starts: the
    summary still lists all three jobs failed under their own conditions, those that started in the column they
    planned, job 2 as never started."""
    from repinv.reporting.summary import NEVER_STARTED

    sweep = tmp_path / "sweep"
    res = repinv("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=vit_tiny", "layers=0", "steps=2",
                 "logger=none", "seed=0,1,2", "+callbacks.die._target_=os._exit", "+callbacks.die._args_=[9]",
                 f"hydra.sweep.dir={sweep}")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    rows = _csv(sweep / "summary.csv")
    assert [(r["job"], r["condition"], r["status"]) for r in rows] == [(str(k), f"seed={k}", "failed") for k in range(3)]
    started = [r["column"] for r in rows if r["error"] != NEVER_STARTED]
    assert started and set(started) == {"L0"}, rows
    assert rows[2]["error"] == NEVER_STARTED and rows[2]["column"] == "?"
    assert "3 jobs, 3 failed" in (sweep / "summary.md").read_text()
    assert "those that never started too" in " ".join(res.stderr.split())


def test_the_planned_jobs_of_a_sweep_are_those_the_basic_sweeper_launches():
    """Each job's overrides in job order, as Hydra's basic sweeper launches them: a preset's sweeper params by the
    command's own sweeps; an Optuna search picks its jobs as it goes, so none are planned."""
    from hydra import compose, initialize_config_dir

    from repinv.cli import CONFIG_DIR, planned_jobs

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        preset = compose("config", ["experiment=depth_vit"], return_hydra_config=True)
        preset.hydra.overrides.task = ["experiment=depth_vit", "seed=0,1"]
        planned = planned_jobs(preset.hydra)
        assert planned_jobs(compose("config", ["hparams_search=optuna"], return_hydra_config=True).hydra) is None
    assert len(planned) == 2 * 7 * 2
    assert planned[0] == ["model.pretrained=False", "layers=0", "experiment=depth_vit", "seed=0"]
    assert planned[-1] == ["model.pretrained=True", "layers=11", "experiment=depth_vit", "seed=1"]


def test_planned_jobs_that_never_started_are_listed_failed_and_borrow_nothing_from_their_folder(tmp_path):
    """Job 1 started and died before its results; jobs 0 and 2 never started. Given the planned jobs, the summary lists
    all three under their conditions; the folder an earlier sweep left for job 2 lends it neither columns nor W&B runs.
    Without them (a sweep that ended normally) only the jobs that ran count."""
    from repinv.reporting.summary import NEVER_STARTED, join_sweep, start_sweep, summarize, written_by_jobs

    sweep = tmp_path / "sweep"
    for job, layer in (("2", 7), ("1", 0)):  # job 2 of an earlier sweep in the folder, then job 1 of this one
        start_sweep(sweep)
        (sweep / job / ".hydra").mkdir(parents=True)
        (sweep / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (sweep / job / ".hydra" / "config.yaml").write_text(
            f"objective:\n  _target_: repinv.objectives.layer.LayerInversion\n  layers: [{layer}]\n")
        join_sweep(sweep, sweep / job)
        (sweep / job / "wandb" / "offline-run-1").mkdir(parents=True)
    out = summarize(sweep, [["seed=0"], ["seed=1"], ["seed=2"]])
    assert [(r["job"], r["condition"], r["status"], r["column"], r["error"] == NEVER_STARTED)
            for r in _csv(sweep / "summary.csv")] == \
        [("0", "seed=0", "failed", "?", True), ("1", "seed=1", "failed", "L0", False), ("2", "seed=2", "failed", "?", True)]
    assert written_by_jobs(out["jobs"], "wandb/offline-run-*") == [sweep / "1" / "wandb" / "offline-run-1"]
    assert [j.path.name for j in summarize(sweep)["jobs"]] == ["1"]


@pytest.mark.slow
def test_a_sweep_with_nested_job_folders_summarises_them_and_fails_with_its_failed_job(tmp_path):
    """hydra.sweep.subdir=runs/${hydra.job.num}: the jobs sit one folder deeper, and the sweep still exits 1."""
    sweep = tmp_path / "sweep"
    res = repinv("-m", "model=vit_tiny", "layers=[0]", "steps=2,-1", "logger=none", f"hydra.sweep.dir={sweep}",
                 "hydra.sweep.subdir=runs/${hydra.job.num}")
    assert res.returncode == 1, res.stderr[-3000:]
    assert [(r["job"], r["status"]) for r in _csv(sweep / "summary.csv")] == [("0", "finished"), ("1", "failed")]


@pytest.mark.parametrize("objective,score", [([], "output_l2"), (["objective=class", "classes=[1]"], "rank")])
def test_the_optuna_search_minimises_each_objectives_own_score(tmp_path, objective, score):
    """hparams_search=optuna scores a job by its objective's score: a class generation search is not refused for
    lacking the layer inversion's output_l2."""
    from repinv.engine.pipeline import build_module, score_metric

    cfg = compose_cfg([*TINY, "hparams_search=optuna", *objective], tmp_path)
    assert score_metric(cfg, build_module(cfg)[2]) == score


def test_a_sweep_preset_run_without_multirun_says_it_ran_one_job(cli):
    """A config that names sweeper params (a preset, hparams_search) run without -m makes one job with the defaults:
    the run says so instead of passing for the sweep."""
    code, _, _, run_dir = cli(*TINY, "hparams_search=optuna", "steps=2", "logger=none")
    assert code == 0
    log = " ".join((run_dir / "cli.log").read_text().split())
    assert "this config sweeps optimizer.lr, priors.blur.sigma_start, steps, but a run without -m is one job" in log
