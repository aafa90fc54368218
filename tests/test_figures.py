"""Every figure script's --smoke mode writes its PNG and a CSV with one row group per panel."""

from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO
from repinv import study

SCRIPTS = sorted(p.stem for p in (REPO / "scripts").glob("fig_*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_figure_smoke_writes_png_and_csv(script, tmp_path):
    """Panels run in the script's own process (--jobs 1); tests/test_recipes.py covers the same executor at --jobs 2."""
    sys.path.insert(0, str(REPO / "scripts"))
    panels = importlib.import_module(script).PANELS
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "scripts"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / f"{script}.py"), "--smoke", "--jobs", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO)
    name = script.removeprefix("fig_")
    png, table = tmp_path / "smoke" / f"{name}.png", tmp_path / "smoke" / f"{name}.csv"
    assert proc.stdout.split() == [str(png), str(table)], proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(table)))
    ran = [p.label if study.value(p.overrides, "steps") is None else f"{p.label} (ran 3 steps)" for p in panels]
    assert ran == list(dict.fromkeys(r["panel"] for r in rows)), "a panel whose own steps did not run says what ran"
    assert all(r["status"] == "finished" and r["steps"] == "3" for r in rows)
    width, height = Image.open(png).size
    assert height > 150 * len(panels) * 0.9 and width > 300


def _figlib():
    sys.path.insert(0, str(REPO / "scripts"))
    return importlib.import_module("figlib")


def test_a_relative_image_or_checkpoint_names_its_own_file_wherever_the_script_runs(tmp_path, monkeypatch):
    """`photo.png` typed in two folders is two photographs: each panel's run names its file by its absolute path, so the
    second folder's figure does not reuse the first folder's runs."""
    figlib = _figlib()
    from fig_vit_entry_representations import PANELS

    runs = {}
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "photo.png").write_bytes(b"")
        (tmp_path / folder / "vit.safetensors").write_bytes(b"")
        monkeypatch.chdir(tmp_path / folder)
        args = figlib.parser("figure").parse_args(["--image", "photo.png", "--image", "chelsea",
                                                   "--checkpoint", "vit.safetensors", "--out", str(tmp_path / "out")])
        runs[folder] = [figlib.panel_run(panel, "fig_vit_entry", args) for panel in PANELS]
        trained = runs[folder][1].overrides
        assert study.value(trained, "image") == f"['{tmp_path / folder / 'photo.png'}','chelsea']"
        assert study.value(trained, "model.checkpoint") == f"'{tmp_path / folder / 'vit.safetensors'}'"
    assert not {r.folder for r in runs["a"]} & {r.folder for r in runs["b"]}


def test_the_first_layernorm_figure_runs_the_ledgers_transplant_conditions():
    """The figure's panels are the conditions the ledger's claims of this figure compare: the transplant alone and
    with the trained first LayerNorm or positional embedding, each given trained weights."""
    sys.path.insert(0, str(REPO / "scripts"))
    from fig_vitb32_encoder1_ln import PANELS

    from repinv.claims.registry import CLAIMS

    ledger = {(run.extra, run.trained) for c in CLAIMS if c.figure == "vitb32_encoder1_ln" for run in c.runs.values()}
    panels = {((f"surgery={study.value(p.overrides, 'surgery')}",), p.trained) for p in PANELS}
    assert panels == ledger and len(panels) == 3


@pytest.mark.parametrize("script", ["fig_vit_class_generation", "fig_vit_b_32_conv_representations"])
def test_a_figure_that_inverts_no_photograph_refuses_image(script, tmp_path, capsys, monkeypatch):
    """Class generation and filter grids draw nothing of --image: it is refused in one paragraph, not ignored."""
    figlib = _figlib()
    import repinv.study

    monkeypatch.setattr(repinv.study, "execute", lambda *a, **k: pytest.fail("a panel ran before the arguments were checked"))
    panels = importlib.import_module(script).PANELS
    code = figlib.main("fig", "figure", "fig_vit_b_32_conv", panels, ["--image", "astronaut", "--out", str(tmp_path)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "--image astronaut: this figure's rows show" in err and "leave it out" in err, err
    inverting = figlib.parser("figure").parse_args(["--image", "astronaut", "--out", str(tmp_path)])
    figlib.check([*panels, figlib.Panel("vit", ["model=vit_tiny"])], "fig_vit_entry", inverting)


def test_long_row_labels_are_wrapped_within_their_rows():
    """A row label longer than its row (a trained panel run without trained weights says so) stays within the row
    and clear of the next row's label."""
    import numpy as np

    from repinv.reporting.figures import grid_figure, plt

    label = "ResNet50 conv1 + ViT-B/32 encoders (no trained weights given) (failed)"
    cells = [(np.zeros((8, 8, 3), np.uint8), "L0")] * 3
    fig = grid_figure([cells, cells], row_labels=[label, "ViT-B/32 (no trained weights given)"], suptitle="figure")
    renderer = fig.canvas.get_renderer()
    first, second = (fig.axes[r * 3].yaxis.label.get_window_extent(renderer) for r in range(2))
    rows = [fig.axes[r * 3].get_window_extent(renderer) for r in range(2)]
    plt.close(fig)
    assert first.height <= rows[0].height + 1 and second.height <= rows[1].height + 1
    assert first.y0 >= second.y1, "the first row's label runs into the second's"
