"""Scaled-out and resumed runs never mix or lose results: sharded strategies, run identity on resume,
continued CSV and W&B histories, W&B runs that end with their job, and settings that make no sense."""

from __future__ import annotations

import csv
import signal
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from test_reliability import RESUMABLE, _signal_at

import wandb_reader
from conftest import compose_cfg, read_metrics


def _csv_rows(out):
    with open(out / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _interrupted(run_repinv, monkeypatch, *overrides, name="cut"):
    """A run of RESUMABLE stopped by SIGTERM during step 13 (its checkpoint is at step 14)."""
    import repinv.engine.pipeline as pipeline

    plain = pipeline.ImageOptimization
    _signal_at(pipeline, monkeypatch, 13)
    with pytest.raises(SystemExit, match=f"^{128 + signal.SIGTERM}$"):
        run_repinv(*RESUMABLE, *overrides, name=name)
    monkeypatch.setattr(pipeline, "ImageOptimization", plain)


# -- settings ---------------------------------------------------------------------------------

def test_non_finite_settings_are_refused_naming_each_key(tmp_path):
    from repinv.engine.pipeline import validate
    from repinv.errors import SettingsError

    cfg = compose_cfg(["regularizer.blur.sigma_start=nan", "init.mean=-inf", "model=vit_tiny"], tmp_path)
    with pytest.raises(SettingsError, match="settings must be finite numbers, not nan or inf") as err:
        validate(cfg)
    assert sorted(err.value.fields) == ["init.mean", "priors.blur.sigma_start"]
    validate(compose_cfg(["model=vit_tiny"], tmp_path))  # the defaults are all finite


def test_a_small_image_is_upscaled_with_a_warning_saying_how_much(tmp_path):
    from repinv.inputs.images import ImageUpscaled, load_images

    Image.fromarray(np.full((3, 3, 3), 128, np.uint8)).save(tmp_path / "tiny.png")
    Image.fromarray(np.full((64, 80, 3), 128, np.uint8)).save(tmp_path / "big.png")
    with pytest.warns(ImageUpscaled) as seen:
        [img] = load_images(str(tmp_path / "tiny.png"), 224)
    assert img.pixels.shape == (3, 224, 224)
    [w] = [w.message for w in seen if isinstance(w.message, ImageUpscaled)]
    assert (w.name, w.shape, w.size) == ("tiny", (3, 3), (224, 224)) and w.factor == pytest.approx(224 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageUpscaled)
        load_images(str(tmp_path / "big.png"), 64)  # downscaled: no warning


# -- several processes ------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    ["trainer.devices=2"],
    ["trainer.devices='2'", "trainer.strategy=ddp"],
    ["trainer.devices=2", "trainer.strategy=ddp_find_unused_parameters_true"],
    ["trainer.devices=1", "trainer.num_nodes=2", "trainer.strategy={_target_:pytorch_lightning.strategies.DDPStrategy}"],
])
def test_every_ddp_setting_on_several_processes_runs_sharded(tmp_path, overrides):
    from repinv.engine.pipeline import trainer_overrides
    from repinv.engine.sharding import ShardedDDP

    strategy = trainer_overrides(compose_cfg(overrides, tmp_path))["strategy"]
    assert isinstance(strategy, ShardedDDP) and strategy._start_method == "popen"


SHARDED = "repinv.engine.sharding.ShardedDDP"


@pytest.mark.parametrize("overrides,needle", [
    (["trainer.devices=2", "trainer.strategy=fsdp"], "trainer.strategy=fsdp"),
    (["trainer.devices=2", "trainer.strategy=deepspeed"], "trainer.strategy=deepspeed"),
    (["trainer.devices=-1", "trainer.accelerator=cpu"], "trainer.devices=-1"),
    # spawn and fork leave the launching process out of the run (it would load rank 0's share into its whole batch)
    (["trainer.devices=2", "trainer.strategy=ddp_spawn"], "trainer.strategy=ddp_spawn starts the processes by spawn"),
    (["trainer.devices=2", "trainer.strategy=ddp_fork_find_unused_parameters_true"], "by fork"),
    (["trainer.devices=2", "trainer.strategy=ddp_notebook"], "trainer.strategy=ddp_notebook starts the processes by fork"),
    (["trainer.devices=2", "trainer.strategy={_target_:pytorch_lightning.strategies.DDPStrategy,start_method:spawn}"],
     "trainer.strategy.start_method=spawn"),
    (["trainer.devices=2", f"trainer.strategy={{_target_:{SHARDED},start_method:fork}}"], "trainer.strategy.start_method=fork"),
])
def test_strategies_a_sharded_run_cannot_use_are_refused(tmp_path, overrides, needle):
    from repinv.engine.pipeline import trainer_overrides
    from repinv.errors import RepinvError

    with pytest.raises(RepinvError, match=needle):
        trainer_overrides(compose_cfg(overrides, tmp_path))


def test_one_process_keeps_the_configured_strategy(tmp_path):
    from repinv.engine.pipeline import trainer_overrides

    assert trainer_overrides(compose_cfg(["trainer.devices=auto"], tmp_path)) == {}  # auto on a CPU: one process
    assert trainer_overrides(compose_cfg(["trainer.devices='1'", "trainer.strategy=ddp"], tmp_path)) == {}


# -- resume -----------------------------------------------------------------------------------

@pytest.mark.parametrize("change,fields", [
    (["seed=1"], {"seed", "model.seed"}),
    (["model.kwargs.num_heads=4"], {"model.kwargs.num_heads"}),
    (["regularizer.blur.sigma_end=0.3", "optimizer=adam"], {"priors.blur.sigma_end", "optimizer._target_"}),
])
def test_a_checkpoint_of_another_experiment_is_refused_naming_each_field(run_repinv, change, fields):
    from repinv.errors import SettingsError

    _, done = run_repinv(*RESUMABLE, "steps=4", "checkpoint_every=2", name="done")
    ckpt = done / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    saved["global_step"] = 2  # as if interrupted half-way
    torch.save(saved, ckpt)
    with pytest.raises(SettingsError, match="was written by a different run") as err:
        run_repinv(*RESUMABLE, "steps=4", *change, f"resume={done}", name="other")
    assert set(err.value.fields) == fields
    with pytest.raises(SettingsError, match="names no_such.field, which the checkpoint does not compare") as err:
        run_repinv(*RESUMABLE, "steps=4", *change, "resume_allow_changes=[no_such.field]", f"resume={done}", name="typo")
    assert err.value.fields == ["no_such.field"]


def linear(base: float, step: int) -> float:
    """The default schedule's rate at `step` of RESUMABLE's 30: lr falls linearly to 0.05 lr."""
    return base * (1 - 0.95 * step / 30)


def test_an_allowed_lr_change_applies_and_is_recorded(run_repinv, monkeypatch):
    _interrupted(run_repinv, monkeypatch, "logger=csv")
    records, out = run_repinv(*RESUMABLE, "logger=csv", "optimizer.lr=2.0", "resume=last",
                              "resume_allow_changes=[optimizer.lr]", name="cut")
    lr = {int(r["step"]): float(r["lr"]) for r in _csv_rows(out) if r["lr"]}  # the last row, at 30, has none
    assert lr[10] == pytest.approx(linear(1.0, 10)), "before the resume: the first segment's rate"
    assert lr[15] == pytest.approx(linear(2.0, 15)) and lr[25] == pytest.approx(linear(2.0, 25))
    change = {"field": "optimizer.lr", "was": 1.0, "now": 2.0, "step": 14}
    assert [r["resumed_with_changes"] for r in read_metrics(out)] == [[change]] * 2
    assert [r["status"] for r in records] == ["finished"] * 2


def test_an_allowed_schedule_change_follows_the_new_schedule_from_the_resume(run_repinv, monkeypatch):
    """LinearLR steps its rate by ratios: the rate after the resume must be the new schedule's, not a path bent from
    where the old one had reached."""
    _interrupted(run_repinv, monkeypatch, "logger=csv")
    _, out = run_repinv(*RESUMABLE, "logger=csv", "scheduler.end_factor=0.5", "resume=last",
                        "resume_allow_changes=[scheduler.end_factor]", name="cut")
    lr = {int(r["step"]): float(r["lr"]) for r in _csv_rows(out) if r["lr"]}  # the last row, at 30, has none
    assert lr[10] == pytest.approx(linear(1.0, 10))
    assert lr[15] == pytest.approx(1 - 0.5 * 15 / 30) and lr[25] == pytest.approx(1 - 0.5 * 25 / 30)


def test_resume_auto_continues_an_unfinished_run_keeps_a_finished_one_and_starts_an_absent_one(run_repinv, monkeypatch):
    """What a sweep run again in its folder after a stop needs of each job, whatever state it was left in."""
    from repinv.errors import SettingsError

    _interrupted(run_repinv, monkeypatch, "logger=csv")
    records, out = run_repinv(*RESUMABLE, "logger=csv", "resume=auto", name="cut")
    assert [(r["status"], r["steps"]) for r in records] == [("finished", 30)] * 2
    before, rows = (out / "metrics.json").read_bytes(), _csv_rows(out)
    kept, _ = run_repinv(*RESUMABLE, "logger=csv", "resume=auto", name="cut")
    assert kept == read_metrics(out) and (out / "metrics.json").read_bytes() == before and _csv_rows(out) == rows
    with pytest.raises(SettingsError, match=r"optimizer.lr: 1.0 there, 2.0 here"):
        run_repinv(*RESUMABLE, "logger=csv", "optimizer.lr=2.0", "resume=auto", name="cut")
    fresh, _ = run_repinv(*RESUMABLE, "resume=auto", name="absent")
    assert [r["steps"] for r in fresh] == [30, 30]


def test_another_kind_of_optimiser_on_resume_is_refused_not_a_crash(run_repinv, monkeypatch, tmp_path):
    """The checkpoint holds SGD's state, which Adam cannot take up: even with the optimiser's settings allowed to
    change, its kind is refused, naming it, and the interrupted run's files stay as they were."""
    from repinv.errors import SettingsError

    _interrupted(run_repinv, monkeypatch)
    before = (tmp_path / "cut" / "metrics.json").read_bytes()
    with pytest.raises(SettingsError, match="optimizer._target_ cannot change on resume") as err:
        run_repinv(*RESUMABLE, "optimizer=adam", "resume=last", "resume_allow_changes=[optimizer]", name="cut")
    assert err.value.fields == ["optimizer._target_"]
    assert (tmp_path / "cut" / "metrics.json").read_bytes() == before


def test_a_resumed_run_continues_its_csv_log_and_its_wandb_run(run_repinv, monkeypatch):
    _interrupted(run_repinv, monkeypatch, "logger=default")
    _, out = run_repinv(*RESUMABLE, "logger=default", "resume=last", name="cut")
    steps = [int(r["step"]) for r in _csv_rows(out)]
    assert steps == [0, 5, 10, 15, 20, 25, 30], "the rows from before the interruption and after it"
    runs = wandb_reader.find_runs(out)
    assert len(runs) == 2 and len({wandb_reader.run_id(r) for r in runs}) == 1, "one W&B run, continued"
    logged = sorted(h["trainer/global_step"] for r in runs for h in wandb_reader.history(r) if "loss" in h)
    assert logged == steps


# -- W&B runs end with their job ----------------------------------------------------------------

def test_a_job_failing_after_wandb_started_ends_its_run_failed(run_repinv, tmp_path, monkeypatch):
    import pytorch_lightning as pl

    def fails(*args, **kwargs):
        raise RuntimeError("the first step failed")

    with monkeypatch.context() as patch:
        patch.setattr(pl.Trainer, "fit", fails)
        with pytest.raises(RuntimeError, match="the first step failed"):
            run_repinv("logger=wandb", "steps=3", name="bad")
    records, _ = run_repinv("logger=wandb", "steps=3", name="good")
    assert records[0]["status"] == "finished"
    bad, good = (wandb_reader.find_runs(tmp_path / name) for name in ("bad", "good"))
    assert len(bad) == len(good) == 1, "each job has its own W&B run"
    assert wandb_reader.exit_code(bad[0]) == 1 and wandb_reader.exit_code(good[0]) == 0
    assert any("loss" in h for h in wandb_reader.history(good[0])) and not wandb_reader.history(bad[0])


def test_a_run_saved_when_the_priors_were_called_regularizer_resumes(run_repinv, monkeypatch, tmp_path):
    """A checkpoint whose identity names the priors by their former name `regularizer` is the same run, not another."""
    from repinv.engine.identity import CONFIG_KEY

    _interrupted(run_repinv, monkeypatch)
    ckpt = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    saved[CONFIG_KEY] = {"regularizer" + k[len("priors"):] if k.startswith("priors.") else k: v
                         for k, v in saved[CONFIG_KEY].items()}
    assert "regularizer.blur.sigma_start" in saved[CONFIG_KEY]
    torch.save(saved, ckpt)
    records, _ = run_repinv(*RESUMABLE, "resume=last", name="cut")
    assert {r["status"] for r in records} == {"finished"} and "resumed_with_changes" not in records[0]


@pytest.mark.parametrize("name,before,after", [
    ("LinearLR", {"end_factor": 0.05, "total_iters": 30}, {"end_factor": 0.5, "total_iters": 30}),
    ("CosineAnnealingLR", {"T_max": 30, "eta_min": 0.0}, {"T_max": 60, "eta_min": 0.1}),
    ("ConstantLR", {"factor": 1.0, "total_iters": 30}, {"factor": 0.5, "total_iters": 30}),
])
def test_a_changed_schedule_restarts_at_the_rate_the_new_settings_give_at_that_step(name, before, after):
    """What a resume with allowed schedule changes does: the rate at step 14 and every later step is the new
    schedule's, as if it had run from the start."""
    from repinv.engine.identity import restart

    def stepped(settings: dict, steps: int):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = getattr(torch.optim.lr_scheduler, name)(opt, **settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(steps):
                opt.step()
                sched.step()
        return opt, sched

    opt, sched = stepped(before, 14)
    for key, value in after.items():
        setattr(sched, key, value)
    restart(sched)
    _, fresh = stepped(after, 14)
    rates = []
    for _ in range(10):
        rates.append((opt.param_groups[0]["lr"], fresh.optimizer.param_groups[0]["lr"]))
        opt.step(), sched.step(), fresh.optimizer.step(), fresh.step()
    assert [a for a, _ in rates] == pytest.approx([b for _, b in rates], rel=1e-9)
    assert sched.get_last_lr() == pytest.approx(fresh.get_last_lr())
