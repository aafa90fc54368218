"""Bad input through the `repinv` command: one paragraph saying what is wrong and what would be right, exit 2.

The command runs in-process (its Hydra app with a patched argv, ~0.5 s) for each case; one
subprocess checks the real process's exit code and stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TINY, read_metrics

FAST = [*TINY, "steps=2", "logger=none"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A file that is not an image, a truncated PNG, an empty directory, grey, palette, RGBA and 16-bit PNGs, and a torch
    file holding a list, alone and as a run folder's checkpoint."""
    import torch

    from repinv.reporting.callbacks import last_checkpoint

    d = tmp_path_factory.mktemp("inputs")
    torch.save([1, 2], d / "list.ckpt")
    last_checkpoint(d / "list_run").parent.mkdir(parents=True)
    torch.save([1, 2], last_checkpoint(d / "list_run"))
    (d / "notes.png").write_text("not an image")
    arr = (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)
    Image.fromarray(arr).convert("RGB").save(d / "whole.png")
    data = (d / "whole.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    (d / "empty").mkdir()
    modes = d / "modes"
    modes.mkdir()
    Image.fromarray(arr).save(modes / "grey.png")
    Image.fromarray(arr).convert("P").save(modes / "palette.png")
    Image.fromarray(arr).convert("RGBA").save(modes / "rgba.png")
    Image.fromarray(arr.astype(np.uint16) * 256).save(modes / "deep.png")
    return d


CASES = {
    "missing image": (["image={d}/missing.png"], "neither an embedded photograph nor an existing file"),
    "not an image": (["image={d}/notes.png"], "could not be read as an image"),
    "truncated image": (["image={d}/truncated.png"], "image file is truncated"),
    "empty directory": (["image={d}/empty"], "is a directory with no images in it"),
    "image that is a number": (["image=2024"], "image=2024 is neither an embedded photograph nor an existing file"),
    "empty image": (["image="], "image= is empty or names an empty entry"),
    "empty image list": (["image=[]"], "image=[] is empty or names an empty entry"),
    "image list with an empty entry": (["image=[chelsea,'']"], "image=['chelsea', ''] is empty or names an empty entry"),
    "image that is a boolean": (["image=true"], "image=True is neither an embedded photograph nor an existing file"),
    "unknown model": (["model.name=vit_base_patch32_22"], "Did you mean 'vit_base_patch32_224'"),
    "the models' shared settings as a model": (["model=base"], "model=base holds the settings every model config "
                                                "shares and is not a model itself. Choose a model config (convmixer,"),
    "unknown model source": (["model.source=timmm"], "model.source=timmm is not a model source. Did you mean 'timm'?"),
    "unknown cpu kernels": (["model.cpu_kernels=fast"], "model.cpu_kernels=fast is not a kernel choice."),
    "model source target that does not exist": (["model.source._target_=repinv.models.sources.Nope"],
                                                "model.source could not be built from _target_=repinv.models.sources.Nope"),
    "model source target that is no source": (["model.source._target_=collections.OrderedDict"],
                                              "model.source._target_=collections.OrderedDict is not a model source"),
    "cpu kernels target that does not exist": (["model.cpu_kernels._target_=repinv.models.nope"],
                                               "model.cpu_kernels could not be built from _target_=repinv.models.nope"),
    "cpu kernels settings it does not take": (["+model.cpu_kernels.width=3"],
                                              "model.cpu_kernels could not be built from _target_=repinv.models.packed_kernels"),
    "unknown layer": (["layers=[blocks.7]"], "Valid layers are indices 0..1 (or -1 for the last)"),
    "layer index out of range": (["layers=[2]"], "Valid layers are indices 0..1 (or -1 for the last)"),
    "layer that does not run": (["layers=[blocks.0.attn.attn_drop]"],
                                "layers=blocks.0.attn.attn_drop does not run in the forward pass of this model"),
    "feature layer that does not run": (["objective=feature", "objective.layer=blocks.0.attn.attn_drop"],
                                        "Pick a module that runs, such as the block that holds it (objective.layer=blocks.0)"),
    "no steps": (["steps=0"], "steps=0 must be a positive whole number of steps"),
    "fractional steps": (["steps=30.5"], "steps=30.5 must be a positive whole number of steps"),
    "image_every not a count": (["image_every=abc"],
                                "image_every=abc must be a whole number of steps, or 0 for the final images alone"),
    "callback setting that is text": (["callbacks.image_timeline.every=abc"],
                                      "callbacks.image_timeline.every=abc must be a number, e.g. "
                                      "callbacks.image_timeline.every=100 (its default)"),
    "negative image timeline interval set on the callback": (["callbacks.image_timeline.every=-1"],
                                                             "callbacks.image_timeline.every=-1 must be a whole number "
                                                             "of steps, or 0 for the final images alone"),
    "fractional checkpoint interval set on the callback": (["callbacks.checkpoints.every=2.5"],
                                                           "callbacks.checkpoints.every=2.5 must be a whole number of "
                                                           "steps, or 0 for no periodic checkpoints"),
    "negative lr": (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 must be a positive number"),
    "negative sigma": (["priors.blur.sigma_start=-1"], "blur sigma must be positive"),
    "unknown loss": (["objective.loss=l3"], "Use one of l1, sse, mse, cosine"),
    "normalisation with two channels": (["model.mean=[0.5,0.5]"],
                                        "model.mean=[0.5, 0.5] must be three finite numbers, one per RGB channel"),
    "normalisation dividing by 0": (["model.std=[0.5,0,0.5]"], "model.std=[0.5, 0, 0.5] must be three finite numbers, "
                                    "one per RGB channel, each above 0"),
    "trained weights offline": (["model.pretrained=true"], "pass it with model.checkpoint=/path/to/model.safetensors"),
    "negative checkpoint_every": (["checkpoint_every=-1"], "checkpoint_every=-1 must be a whole number"),
    "checkpoint folder inside a file": (["callbacks.checkpoints.dirpath={d}/notes.png/checkpoints"],
                                        "/notes.png is not a folder). Give the checkpoints a folder that can be"),
    "unknown class name": (["objective=class", "classes=[goldfsh]"], "Did you mean 'goldfish'"),
    "class without classes": (["objective=class"], "objective=class needs classes"),
    "class that is a boolean": (["objective=class", "classes=[true]"], "class True is neither an index nor a name"),
    "resume without a checkpoint": (["resume={d}/empty"], "names no checkpoint"),
    "resume from a torch file that is no checkpoint": (["resume={d}/list.ckpt"], "list.ckpt could not be read as a "
                                                       "checkpoint (it holds a list, not a dict)"),
    "resume a run folder whose checkpoint is no checkpoint": (["resume={d}/list_run"], "last.ckpt could not be read as "
                                                              "a checkpoint (it holds a list, not a dict)"),
    "layer a surgery removed": (["model=mixer_tiny", "+surgery.x._target_=repinv.models.surgery.Remove",
                                 "+surgery.x.pattern=blocks", "layers=[0]"],
                                "layers=0 names blocks.0, which this model no longer has"),
    "torchvision kwargs its build refuses": (["model=tv_vit_tiny", "+model.kwargs.representation_size=-1"],
                                             "do not fit torchvision's vit_b_32: RuntimeError"),
    "network built for another size": (["model.kwargs.img_size=32"], "model.kwargs.img_size=32 builds the network for "
                                                                      "another input size than model.input_size=64"),
    "input size 0": (["model=resnet_tiny", "model.input_size=0"], "model.input_size=0 must be an image size in pixels"),
    "input size of three sides": (["model.input_size=[32,32,32]"], "model.input_size=[32, 32, 32] must be an image size"),
    "a trainer length apart from steps": (["trainer.max_steps=5"], "trainer.max_steps=5 differs from steps=2, which it "
                                           "is taken from and which the run follows: set steps=5 instead"),
    "a trainer precision apart from precision": (["trainer.precision=bf16"], "trainer.precision=bf16 differs from "
                                                 "precision=32-true, which it is taken from and which the run follows: set "
                                                 "precision=bf16 instead"),
    "a Trainer length of its own": (["+trainer.max_epochs=1", "+trainer.limit_train_batches=1"], "trainer.max_epochs=1: "
                                    "the run takes `steps` steps, one optimiser step on the image each, and Lightning's "
                                    "max_epochs would stop it early"),
    "gradient clipping by the Trainer": (["+trainer.gradient_clip_val=0.1"], "trainer.gradient_clip_val=0.1: the run "
                                         "takes `steps` steps"),
    "float16 on a CPU": (["precision=16-mixed", "trainer.accelerator=cpu"], "precision=16-mixed on a CPU: Lightning would "
                         "run bfloat16 instead"),
    "an accelerator Lightning does not know": (["trainer.accelerator=abacus"], "trainer.accelerator=abacus: there is no "
                                               "such accelerator. Use auto, cpu or gpu"),
    "objective layers apart from layers": (["objective.layers=[0]", "layers=[1]"], "objective.layers=[0] differs from "
                                           "layers=[1]"),
    "a prior's weight that is text": (["priors=tv", "priors.tv.weight=abc"],
                                      "priors.tv.weight=abc must be a number, e.g. priors.tv.weight=0.1 (its default)"),
    "an optimiser setting that is text": (["+optimizer.weight_decay=abc"],
                                          "optimizer.weight_decay=abc must be a number, e.g. optimizer.weight_decay=0"),
    "checkpoint that is a folder": (["model.checkpoint={d}/empty"], "/empty is a folder. Pass the path of a safetensors "
                                    "or torch state-dict file"),
    "pretrained that is not a switch": (["model.pretrained=abc"], "model.pretrained=abc must be true (the model "
                                        "library's trained weights) or false (untrained)"),
    "empty checkpoint path": (["model.checkpoint=''"], "model.checkpoint is empty (''), which would run the model "
                                                          "untrained"),
    "unknown precision": (["precision=fp8"], "precision=fp8 is not a precision repinv knows. Use precision=32-true"),
    "half-precision image": (["precision=bf16-true"], "would make the image itself half precision"),
    "nan setting": (["priors.blur.sigma_start=nan"], "priors.blur.sigma_start=nan: settings must be finite"),
    "fourier weights below float32": (["param=fourier", "param.decay=40", "optimizer=adam"],
                                      "param.decay=40 weights the finest frequencies of a 64x64 image by less than 1/1e+12"),
    "pyramid gain that runs away": (["param=pyramid", "param.gain=1e3"],
                                    "param.gain=1000.0 must lie in [0.0001, 1] for 4 levels"),
    "objective scale 0": (["objective.scale=0"], "objective.scale=0 must be positive"),
    "negative noise baseline": (["objective.noise_std=-1"], "objective.noise_std=-1 must be positive"),
    "octaves that never reach full size": (["priors=octaves", "priors.octaves.scales=[0.25,0.5]"],
                                           "priors.octaves.scales=[0.25, 0.5] must be ascending scales in (0, 1] "
                                           "ending at 1.0"),
    "feature samples beyond memory": (["objective=feature", "objective.samples=1e9"], "objective.samples=1000000000.0 must be"),
    "jitter wider than the image": (["priors=blur_jitter", "priors.jitter.pixels=1000000000"],
                                    "priors.jitter.pixels=1000000000 shifts the crop by more than the 64x64 input"),
    "blur size that is not whole": (["priors.blur.kernel_size=3.0"],
                                    "priors.blur.kernel_size=3.0 must be a positive odd whole number such as 3"),
    "blur every fraction of a step": (["priors.blur.every=1.5"], "priors.blur.every=1.5 must be a whole number of steps"),
    "jitter by a fraction of a pixel": (["priors=blur_jitter", "priors.jitter.pixels=8.5"],
                                        "priors.jitter.pixels=8.5 and priors.jitter.start=200 must be non-negative whole"),
    "jitter from a fraction of a step": (["priors=blur_jitter", "priors.jitter.start=200.5"],
                                         "priors.jitter.pixels=16 and priors.jitter.start=200.5 must be non-negative whole"),
    "blur wider than the image": (["priors.blur.kernel_size=129"], "priors.blur.kernel_size=129 is wider than"),
    "feature layer that does not exist": (["objective=feature", "objective.layer=nonexistent"],
                                          "objective.layer=nonexistent is not a layer of this model"),
    "prior that is not a Prior": (["+priors.x._target_=builtins.print"],
                                  "priors.x._target_=builtins.print is not an image prior"),
    "metric that takes other arguments": (["+metrics.x._target_=math.sqrt", "+metrics.x._partial_=true"],
                                          "metrics.x (math.sqrt) failed on two 64x64 images (TypeError"),
    "metric with one number for the batch": (["+metrics.x._target_=torch.dist", "+metrics.x._partial_=true"],
                                             "metrics.x (torch.dist) returned a tensor of shape [] for 2 images"),
    "metric with an image per image": (["+metrics.x._target_=torch.sub", "+metrics.x._partial_=true"],
                                       "metrics.x (torch.sub) returned a tensor of shape [2, 3, 64, 64] for 2 images"),
    "fourier decay that is not a number": (["param=fourier", "param.decay=abc"],
                                           "param.decay=abc must be a number, e.g. param.decay=1.0"),
    "pyramid levels that are not a number": (["param=pyramid", "param.levels=two"],
                                             "param.levels=two must be a number, e.g. param.levels=4"),
    "pyramid gain that is not a number": (["param=pyramid", "param.gain=abc"],
                                          "param.gain=abc must be a number, e.g. param.gain=0.5"),
    "parametrisation whose constructor fails": (["param._target_=collections.OrderedDict"],
                                                "param could not be built from _target_=collections.OrderedDict (TypeError"),
    "optimizer setting its constructor refuses": (["+optimizer.momentum=-1"], "optimizer could not be built from "
                                                  "_target_=torch.optim.SGD (ValueError: Invalid momentum value: -1)"),
    "scheduler end factor above 1": (["scheduler.end_factor=2"], "scheduler could not be built from "
                                     "_target_=torch.optim.lr_scheduler.LinearLR (ValueError: Ending multiplicative factor"),
    "scheduler start factor 0": (["scheduler.start_factor=0"], "scheduler could not be built from "
                                 "_target_=torch.optim.lr_scheduler.LinearLR (ValueError: Starting multiplicative factor"),
    "cosine schedule over no steps": (["scheduler=cosine", "scheduler.T_max=0"],
                                      "scheduler.T_max=0 must be a positive whole number of steps"),
    "cosine schedule over negative steps": (["scheduler=cosine", "scheduler.T_max=-1"],
                                            "scheduler.T_max=-1 must be a positive whole number of steps; the scheduler "
                                            "configs count in steps, e.g. scheduler.T_max=${steps}"),
    "cosine schedule over a fraction of a step": (["scheduler=cosine", "scheduler.T_max=0.5"],
                                                  "scheduler.T_max=0.5 must be a positive whole number of steps"),
    "cosine schedule to a negative floor": (["steps=20", "scheduler=cosine", "scheduler.eta_min=-1"],
                                            "scheduler (_target_=torch.optim.lr_scheduler.CosineAnnealingLR) takes the "
                                            "learning rate to -0.1564 at step 11 of 20: a negative rate steps up the loss"),
    "linear schedule over negative steps": (["scheduler.total_iters=-5"],
                                            "scheduler.total_iters=-5 must be a positive whole number of steps"),
    "step schedule over a fraction of a step": (["scheduler._target_=torch.optim.lr_scheduler.StepLR",
                                                 "~scheduler.start_factor", "~scheduler.end_factor", "~scheduler.total_iters",
                                                 "+scheduler.step_size=2.5"],
                                                "scheduler.step_size=2.5 must be a positive whole number of steps"),
    "target that does not exist": (["param._target_=repinv.params.Nope"],
                                   "param could not be built from _target_=repinv.params.Nope"),
    "arguments a target does not take": (["+param.levels=3"], "param could not be built from _target_=repinv.params.Pixel"),
    "strategy class that does not exist": (["trainer.devices=2", "trainer.accelerator=cpu",
                                            "trainer.strategy={{_target_:repinv.engine.sharding.ShardedDPP}}"],
                                           "trainer.strategy could not be built from _target_=repinv.engine.sharding.ShardedDPP"),
    "strategy timeout": (["trainer.devices=2", "trainer.accelerator=cpu",
                          "trainer.strategy={{_target_:pytorch_lightning.strategies.DDPStrategy,timeout:60}}"],
                         "trainer.strategy.timeout=60: how long a collective waits for the other processes is "
                         "collective_timeout_s"),
    "optimized metric the records lack": (["+optimized_metric=output_l3"],
                                          "optimized_metric=output_l3 is not a number this run's records hold"),
    "optimized metric of another objective": (["objective=class", "classes=[1]", "+optimized_metric=psnr"],
                                              "Use one of loss, logit, prob, rank, steps, seconds_per_step"),
    "trainer option that does not exist": (["+trainer.bogus_option=3"],
                                           "trainer could not be built from _target_=pytorch_lightning"),
    "init std missing": (["init.std=null"], "init.mean=0.7 and init.std=None must be numbers"),
    "init mean a word": (["init.mean=abc"], "init.mean=abc and init.std=0.05 must be numbers"),
    "init std beyond float32": (["init.std=1e39"], "init.mean=0.7 and init.std=1e+39 must be numbers, at most "
                                "float32's largest (3.4e38) in size"),
    "init mean beyond float32": (["init.mean=-1e39"], "init.mean=-1e+39 and init.std=0.05 must be numbers, at most "
                                 "float32's largest"),
    "negative seed": (["seed=-1"], "seed=-1 must be a whole number from 0 to 2^32-1"),
    "compile a word": (["compile=abc"], "compile=abc: a switch is true or false, e.g. compile=true or debug=false."),
    "debug a word": (["debug=abc"], "debug=abc: a switch is true or false"),
    "compile a number": (["compile=1"], "compile=1: a switch is true or false"),
    "fractional seed": (["seed=1.5"], "seed=1.5 must be a whole number"),
    "matmul precision torch does not know": (["matmul_precision=bogus"], "matmul_precision=bogus is not a float32"),
    "learning rate beyond float32": (["optimizer.lr=1e40"], "optimizer.lr=1e+40 must be a positive number, at most"),
    "a setting that does not resolve": (["steps=${{no_such_key}}"], "steps: its value does not resolve (Interpolation key"),
    "one unit twice": (["objective=feature", "objective.units=[3,3]"], "objective.units=[3, 3] names unit 3 more than once"),
    "one class twice": (["objective=class", "classes=[134,tench,0]"], "names class 0 more than once"),
    "one layer twice": (["layers=[1,blocks.1]"], "names layer blocks.1 more than once"),
}

# Refused by Hydra's composition, before any run folder exists.
COMPOSITION = {
    "unknown option": (["param=bogus"], "param=bogus: there is no config 'bogus' in the group 'param'"),
    "unknown key": (["bogus=1"], "Could not override 'bogus'"),
    "malformed override": (["layers=[0,"], "do not compose"),
    "group set to null": (["scheduler=null"], "scheduler=null: a config group is chosen by the name of one of its configs, "
                          "and null names none. scheduler cannot be left out; scheduler=constant gives a constant learning rate"),
    "group with a none option set to null": (["logger=null"], "To leave logger out use logger=none."),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_paragraph_and_exit_2(case, cli, files, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    overrides, needle = CASES[case]
    code, _, err, run_dir = cli(*FAST, *(o.format(d=files) for o in overrides))
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert err.startswith("repinv: error: ") and "\n\n" not in err.strip(), err
    message = (run_dir / "error.txt").read_text().strip()
    assert needle in message and "\n" not in message, message


@pytest.mark.parametrize("case", list(COMPOSITION))
def test_overrides_hydra_refuses_are_one_paragraph_and_exit_2(case, cli):
    overrides, needle = COMPOSITION[case]
    code, _, err, run_dir = cli(*FAST, *overrides)
    assert code == 2, err[-2000:]
    assert err.startswith("repinv: error: ") and "Traceback" not in err and "\n\n" not in err.strip(), err
    assert needle in " ".join(err.split()) and not run_dir.exists()


def test_a_run_folder_inside_a_file_is_one_paragraph_and_exit_2(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("")
    code, _, err, _ = cli(*FAST, name="notes.txt/run")
    assert code == 2 and err.startswith("repinv: error: ") and "Traceback" not in err, err
    assert f"{tmp_path / 'notes.txt' / 'run'} cannot be created or written (Not a directory)" in " ".join(err.split())


def test_a_run_folder_inside_a_file_is_a_repinv_error_through_the_python_call(tmp_path):
    import repinv
    from repinv.errors import RepinvError

    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(RepinvError, match=re.escape(f"{tmp_path / 'notes.txt' / 'run'} cannot be created or written")):
        repinv.run([*FAST, f"hydra.run.dir={tmp_path / 'notes.txt' / 'run'}"])


def test_a_setting_a_config_leaves_to_the_command_line_is_one_paragraph(tmp_path):
    """The SLURM launcher needs a partition; without one the sweep is refused before any job, naming the key."""
    res = subprocess.run([sys.executable, "-m", "repinv", "-m", "hydra/launcher=slurm", *FAST,
                          f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "hydra.launcher.partition has no value" in " ".join(res.stderr.split()), res.stderr


def test_a_long_path_in_an_error_stays_whole_on_its_line(cli, tmp_path):
    """The paragraph wraps between words only: a path longer than a line can still be copied from it."""
    path = str(tmp_path / ("a-very-long-folder-name-" * 6) / "missing-photograph.png")
    code, _, err, _ = cli(*FAST, f"image={path}")
    assert code == 2 and any(path in line for line in err.splitlines()), err


def test_a_schedule_that_fails_at_its_first_step_is_refused_before_the_run_folder_is_written(cli):
    """A cosine annealing to eta_min=[1] fails only when stepped: tried before the run, it leaves no run behind."""
    code, _, err, run_dir = cli(*FAST, "scheduler=cosine", "scheduler.eta_min=[1]")
    assert code == 2 and "CosineAnnealingLR" in err, err
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "metrics.json").exists()


def test_a_prior_target_is_checked_before_it_is_called(cli, capsys):
    code, _, err, _ = cli(*FAST, "+priors.x._target_=builtins.print", "+priors.x.sep=CALLED")
    assert code == 2 and "is not an image prior" in err
    assert "CALLED" not in capsys.readouterr().out


def test_plugin_errors_through_the_python_call_are_repinv_errors(tmp_path):
    import repinv
    from repinv.errors import RepinvError

    for overrides, needle in (["param._target_=repinv.params.Nope"], "param could not be built"), \
                             (["+metrics.x._target_=torch.sub", "+metrics.x._partial_=true"], "metrics.x (torch.sub) returned"), \
                             (["param=bogus"], "there is no config 'bogus'"):
        with pytest.raises(RepinvError, match=re.escape(needle)):
            repinv.run([*FAST, *overrides, f"hydra.run.dir={tmp_path / 'run'}"])


def test_debug_shows_the_traceback(cli):
    code, _, err, _ = cli(*FAST, "steps=0", "debug=true")
    assert code != 0 and "Traceback" in err and "RepinvError" in err


def test_grey_palette_rgba_and_16_bit_images_are_converted_with_a_warning(cli, files):
    code, _, err, run_dir = cli(*FAST, "layers=[0]", f"image={files}/modes")
    assert code == 0, err[-2000:]
    assert sorted(r["image"] for r in read_metrics(run_dir)) == ["deep", "grey", "palette", "rgba"]
    log = (run_dir / "cli.log").read_text()
    assert "deep.png: 16-bit image scaled to 8 bits and converted to RGB" in log
    assert "grey.png: L image converted to RGB" in log and "palette.png: P image converted to RGB" in log
    assert "rgba.png: RGBA image composited on white and converted to RGB" in log


@pytest.mark.filterwarnings("default::UserWarning")  # the suite ignores UserWarning; a user's run shows it
def test_a_warning_during_the_run_is_kept_in_its_log_file(cli, monkeypatch):
    from repinv.engine import precision as precision_lib

    monkeypatch.setattr(precision_lib, "native_bf16", lambda: False)
    code, _, err, run_dir = cli(*FAST, "layers=[0]", "precision=bf16")
    assert code == 0, err[-2000:]
    assert "precision=bf16 on a CPU without native bfloat16" in (run_dir / "cli.log").read_text()


def test_wandb_failures_warn_and_the_run_finishes_with_local_logs(run_repinv, monkeypatch):
    import wandb

    def fail(*args, **kwargs):
        raise wandb.errors.CommError("no route to the W&B server")

    monkeypatch.setattr(wandb, "init", fail)
    with pytest.warns(UserWarning, match="logger 'wandb' could not start .*no route"):
        records, out = run_repinv("logger=default", "steps=3", name="no-start")
    assert records[0]["status"] == "finished" and (out / "csv" / "metrics.csv").is_file()
    monkeypatch.undo()

    monkeypatch.setattr(wandb, "finish", fail)
    try:
        with pytest.warns(UserWarning, match="W&B could not finish the run"):
            records, out = run_repinv("logger=default", "steps=3", name="no-finish")
    finally:
        monkeypatch.undo()
        wandb.finish()
    assert records[0]["status"] == "finished" and read_metrics(out)[0]["status"] == "finished"


@pytest.mark.slow
def test_the_real_command_exits_2_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "repinv", *FAST, "image=/no/such/photo.png", f"hydra.run.dir={tmp_path}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.startswith("repinv: error: image=/no/such/photo.png is neither") and "Traceback" not in res.stderr


def test_the_examples_the_errors_suggest_run(tmp_path):
    """The example command and call that an error about the overrides ends with work as given (steps shortened)."""
    import ast
    import shlex

    import repinv
    from repinv.api import RUN_EXAMPLE
    from repinv.cli import CLI_EXAMPLE

    call = ast.literal_eval(RUN_EXAMPLE.removeprefix("repinv.run(").removesuffix(")"))
    for i, overrides in enumerate((call, shlex.split(CLI_EXAMPLE)[1:])):
        short = [*(o for o in overrides if not o.startswith("steps=")), "steps=2", "logger=none",
                 f"hydra.run.dir={tmp_path / str(i)}"]
        assert repinv.run(short).records, overrides
