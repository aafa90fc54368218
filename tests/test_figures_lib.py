"""A model's input filters: found, normalised, drawn as a grid, written and logged by every run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import wandb_reader
from conftest import compose_cfg
from repinv.reporting.callbacks import FilterGrid
from repinv.reporting.figures import filter_grid, filter_stats, grid_layout, input_conv, input_filters, minmax


def _cells(png, count: int, kernel: int) -> np.ndarray:
    """The filter cells of a filter_grid PNG, as [count, k, k, 3] floats in [0, 1] at the filters' own size."""
    img = np.asarray(Image.open(png).convert("RGB")).astype(np.float64) / 255
    cols, _, scale = grid_layout(count, kernel)
    side = kernel * scale
    cells = []
    for i in range(count):
        r, c = divmod(i, cols)
        top, left = 1 + r * (side + 1), 1 + c * (side + 1)
        cells.append(img[top : top + side : scale, left : left + side : scale])
    return np.stack(cells)


@pytest.fixture
def trained_vit(tmp_path):
    """A 'trained' vit_tiny checkpoint: untrained weights moved by noise."""
    net = instantiate(compose_cfg(["model=vit_tiny"], tmp_path).model).net
    gen = torch.Generator().manual_seed(3)
    state = {k: (v + 0.1 * torch.randn(v.shape, generator=gen)).contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / "vit.safetensors"
    save_file(state, str(path))
    return path, state


def test_run_writes_and_logs_the_checkpoints_patch_filters(run_repinv, trained_vit):
    path, state = trained_vit
    _, out = run_repinv(f"model.checkpoint={path}", "steps=2", "log_every=1", "logger=wandb")
    weights = state["patch_embed.proj.weight"]  # vit_tiny: 64 filters of 3x16x16
    cols, rows, scale = grid_layout(64, 16)
    png = Image.open(out / "filters.png")
    assert png.size == (cols * (16 * scale + 1) + 1, rows * (16 * scale + 1) + 1) == (265, 265)
    expected = minmax(weights).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(_cells(out / "filters.png", 64, 16), expected, atol=0.5 / 255 + 1e-6)
    stats = json.loads((out / "filters.json").read_text())
    assert stats["module"] == "patch_embed.proj" and stats["filters"] == 64 and stats["kernel"] == 16
    [run] = wandb_reader.find_runs(out)
    logged = [h["filters"] for h in wandb_reader.history(run) if "filters" in h]
    assert len(logged) == 1 and logged[0]["_type"] == "images/separated" and logged[0]["count"] == 1
    media = np.asarray(Image.open(run.parent / "files" / logged[0]["filenames"][0]).convert("RGB"))
    assert np.array_equal(media, np.asarray(png.convert("RGB")))
    info = wandb_reader.run_info(run)
    assert "trained" in info["tags"] and info["name"].startswith("vit_tiny-")
    assert wandb_reader.config(run)["steps"] == 2


def test_input_filters_of_checkpoint_equal_its_conv_weights(tmp_path, trained_vit):
    path, state = trained_vit
    model = instantiate(compose_cfg(["model=vit_tiny", f"model.checkpoint={path}"], tmp_path).model)
    assert torch.equal(input_filters(model.net), state["patch_embed.proj.weight"])
    normed = minmax(input_filters(model.net))
    assert (torch.allclose(normed.flatten(1).amin(1), torch.zeros(64))
            and torch.allclose(normed.flatten(1).amax(1), torch.ones(64)))


@pytest.mark.parametrize("model,module", [("resnet_tiny", "conv1"), ("tv_vit_tiny", "conv_proj"), ("mixer_tiny", "stem.proj")])
def test_input_conv_is_the_first_conv_on_the_image(tmp_path, model, module):
    path, conv = input_conv(instantiate(compose_cfg([f"model={model}"], tmp_path).model).net)
    assert path == module and conv.in_channels == 3


def test_models_without_an_image_conv_are_skipped(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    assert input_conv(net) is None and input_filters(net) is None
    trainer = SimpleNamespace(global_step=0, loggers=[])
    FilterGrid(tmp_path).on_train_start(trainer, SimpleNamespace(net=net))
    assert not list(tmp_path.iterdir())


def test_filter_stats_tell_smooth_filters_from_noise(tmp_path):
    ramp = torch.linspace(0, 1, 8)
    smooth = (ramp[:, None] + ramp[None, :]).expand(10, 3, 8, 8)
    noise = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert filter_stats(smooth)["structured"] == 1.0 and filter_stats(smooth)["neighbour_corr"] > 0.8
    assert filter_stats(noise)["structured"] == 0.0 and abs(filter_stats(noise)["neighbour_corr"]) < 0.2
    png = filter_grid(torch.cat([smooth, noise[:3]]), tmp_path / "f.png")
    cols, rows, scale = grid_layout(13, 8)
    assert (cols, rows, scale) == (4, 4, 4) and Image.open(png).size == (4 * 33 + 1, 4 * 33 + 1)


def test_figure_source_torchvision_picks_tv_models_and_the_experiments_layer_names_resolve(tmp_path):
    import sys

    from conftest import REPO
    from repinv.models.taps import resolve_layers

    sys.path.insert(0, str(REPO / "scripts"))
    from figlib import model_config

    given = ["model=vit_b_32", "model=vit_tiny", "layers=[patch_embed,0]", "model=mixer_b16"]
    assert [model_config(o, "torchvision") for o in given] == ["model=tv_vit_b_32", "model=tv_vit_tiny",
                                                               "layers=[patch_embed,0]", "model=mixer_b16"]
    assert [model_config(o, "timm") for o in given] == given
    cfg = compose_cfg(["experiment=fig_vit_b_32_conv", model_config("model=vit_tiny", "torchvision")], tmp_path)
    taps = resolve_layers(instantiate(cfg.model).net, cfg.layers)
    assert [(t.label, t.module) for t in taps] == [("patch_embed", "conv_proj")], "the experiment config's patch_embed"


@pytest.mark.parametrize("script", ["figlib", "recipes"])
@pytest.mark.parametrize("steps", ["0", "-5", "1.5"])
def test_the_study_tools_refuse_steps_that_are_no_number_of_steps(script, steps, capsys):
    """--steps 0 used to read as "the default" (the whole budget); it is refused, as are fractions and negatives."""
    import importlib
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    module = importlib.import_module(script)
    parser = module.parser("figure") if script == "figlib" else module.parser()
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--steps", steps])
    assert stop.value.code == 2 and f"{steps} is not a number of steps" in capsys.readouterr().err


def test_a_figure_of_several_photographs_draws_a_row_per_photograph_with_its_own_target(run_repinv, tmp_path, monkeypatch):
    import sys

    from conftest import REPO
    from repinv.reporting.results import FINISHED, target_png

    sys.path.insert(0, str(REPO / "scripts"))
    import figlib

    records, run_dir = run_repinv("image=[chelsea,astronaut]", "layers=[0,1]", "steps=2", "logger=none")
    drawn = {}
    monkeypatch.setattr(figlib, "titled_grid", lambda rows, png, row_labels, **kw: drawn.update(rows=rows, labels=row_labels))
    panel = figlib.Panel("vit", [])
    figlib.assemble("fig", "title", [panel], {"vit": (FINISHED, run_dir, "untrained")}, tmp_path)
    assert drawn["labels"] == ["vit · chelsea", "vit · astronaut"]
    for image, row in zip(["chelsea", "astronaut"], drawn["rows"]):
        target = np.asarray(Image.open(target_png(run_dir, image)).convert("RGB"))
        assert np.array_equal(row[0][0], target) and row[0][1] == "target"
        mine = [r for r in records if r["image"] == image]
        assert [title for _, title in row[1:]] == [f"{r['column']} · {r['caption']}" for r in mine]


def test_figure_photographs_are_repeatable_and_their_paths_reach_the_run_whole(tmp_path):
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import figlib

    args = figlib.parser("figure").parse_args(["--image", "my photos/cat (1).png", "--image", "chelsea", "--out", str(tmp_path)])
    run = figlib.panel_run(figlib.Panel("vit", []), "fig_vit_b_32_conv", args)
    [image] = [o for o in run.overrides if o.startswith("image=")]
    assert list(compose_cfg([image], tmp_path).image) == [str(Path("my photos/cat (1).png").resolve()), "chelsea"]


def test_a_panel_whose_own_steps_were_replaced_says_how_many_ran(tmp_path):
    """--steps 7 runs both of the trained-input figure's panels (1,500 and 105,000 steps) for 7 steps: their labels
    say so, and a panel without steps of its own keeps its label."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import figlib
    from fig_vit_trainedinput_untrained import PANELS

    args = figlib.parser("figure").parse_args(["--steps", "7", "--out", str(tmp_path)])
    labels = [figlib.ran_label(p, figlib.panel_run(p, "fig_trained_input", args)) for p in PANELS]
    assert labels == ["1,500 steps (ran 7 steps)", "105,000 steps (ran 7 steps)"]
    own = figlib.parser("figure").parse_args(["--out", str(tmp_path)])
    assert [figlib.ran_label(p, figlib.panel_run(p, "fig_trained_input", own)) for p in PANELS] == [p.label for p in PANELS]
    plain = figlib.Panel("vit", ["model=vit_tiny"])
    assert figlib.ran_label(plain, figlib.panel_run(plain, "fig_trained_input", args)) == "vit"


@pytest.mark.parametrize("args,needle", [
    (["model=vit_tiny", "layers=[0]"], "model=vit_tiny: the figure sets model in its runs, per panel, and an extra override "
                                       "would replace it in every run; leave it out"),
    (["steps=5"], "steps=5: the figure sets steps in its runs, per panel, and an extra override would replace it in every "
                  "run; use --steps instead"),
    (["model.checkpoint={file}"], "use --checkpoint instead"),
    (["+image=[coffee]"], "use --image instead"),
    (["bogus=1"], "The overrides ['bogus=1'] do not compose (Could not override 'bogus'."),
    (["param=nonexistent"], "param=nonexistent: there is no config 'nonexistent' in the group 'param'"),
    (["seed=x"], "seed=x must be a whole number from 0 to 2^32-1"),
    (["--checkpoint", "/no/such.safetensors"], "--checkpoint /no/such.safetensors: /no/such.safetensors is not a file"),
    (["--image", "/nonexistent.jpg"], "--image /nonexistent.jpg: image=/nonexistent.jpg is neither an embedded photograph"),
])
def test_a_figure_refuses_bad_arguments_before_any_run(args, needle, tmp_path, capsys, monkeypatch):
    """An extra override of what a panel sets would make every panel the same run; a bad override or file would fail
    every panel. Each is refused in one paragraph before the first run."""
    import importlib
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "scripts"))
    import repinv.study

    monkeypatch.setattr(repinv.study, "execute", lambda *a, **k: pytest.fail("a panel ran before the arguments were checked"))
    (tmp_path / "file").write_text("")
    figure = importlib.import_module("fig_vit_vs_resnet_untrained_representations")
    code = figure.main("fig", "figure", "fig_vit_vs_resnet", figure.PANELS,
                       ["--out", str(tmp_path / "out"), *(a.format(file=tmp_path / "file") for a in args)])
    err = capsys.readouterr().err
    assert code == 2 and ": error: " in err and "Traceback" not in err and len(err.strip().split("\n\n")) == 1, err
    assert needle.format(file=tmp_path / "file") in " ".join(err.split()), err
    assert not (tmp_path / "out").exists()


def test_a_filter_is_structured_when_its_neighbour_correlation_exceeds_one_half():
    """Noise blended into a smooth ramp, in steps: each filter counts as structured exactly when its own neighbour
    correlation is above 0.5, and the blends reach both sides of 0.5 closely (within 0.1)."""
    ramp = torch.linspace(0, 1, 8)
    smooth = (ramp[:, None] + ramp[None, :]).expand(1, 3, 8, 8)
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = []
    for w in torch.linspace(0, 1, 41):
        stats = filter_stats(smooth * (1 - w) + noise * w * 0.5)
        seen.append(stats["neighbour_corr"])
        assert stats["structured"] == float(stats["neighbour_corr"] > 0.5), stats
    assert any(0.4 < c <= 0.5 for c in seen) and any(0.5 < c < 0.6 for c in seen), seen
