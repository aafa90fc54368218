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
