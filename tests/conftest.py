"""Shared fixtures: offline environment, an in-process run on a tiny model, result readers."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# Never reach a hub or W&B server.
os.environ.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONSOLE="off")

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from repinv.cli import CONFIG_DIR  # noqa: E402
from repinv.conf import respell_all  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# A tiny ViT (2 blocks, width 64, 64x64) on which 60 plain SGD steps clearly improve the image.
TINY = ["model=vit_tiny", "layers=[0,patch_embed]", "optimizer.lr=1.0", "steps=60", "log_every=10", "image_every=30"]


def pytest_configure(config):
    """Keep W&B's own files out of the home directory, in a folder of this pytest process. Made here, not on import:
    the processes a test launches import test modules (and so this one) too, and may end without unconfiguring."""
    config.wandb_home = Path(tempfile.mkdtemp(prefix="repinv-wandb-"))
    os.environ.update({f"WANDB_{part.upper()}_DIR": str(config.wandb_home / part) for part in ("cache", "config", "data")})
    _share_the_cores()


def _share_the_cores() -> None:
    """Under pytest-xdist, give each worker (and the processes its tests launch) its share of the cores: torch's
    default of every core per process would have the workers' threads wait on each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(items):
    """The slow tests first: pytest-xdist hands tests out in this order, so its workers start the long ones side by side
    and end on short ones, rather than one worker finishing a long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_unconfigure(config):
    """Remove this test process's W&B folder."""
    shutil.rmtree(config.wandb_home, ignore_errors=True)


def compose_cfg(overrides: list[str], out_dir: Path):
    """Compose the app's config as the CLI would (former names spelled anew), with `out_dir` as the run folder."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=respell_all(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def run_repinv(tmp_path):
    """Run repinv in-process; returns (records, run folder)."""
    from repinv.engine.pipeline import run

    def _run(*overrides: str, tiny: bool = True, name: str = "run"):
        out = tmp_path / name
        cfg = compose_cfg([*(TINY if tiny else []), *overrides], out)
        return run(cfg).records, out

    return _run


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run `repinv ARGS` in-process in the folder `name`; returns (exit code, stdout, stderr, run folder)."""
    from repinv.cli import main

    def _cli(*args: str, name: str = "run"):
        run_dir = tmp_path / name
        GlobalHydra.instance().clear()
        monkeypatch.setattr(sys, "argv", ["repinv", *args, f"hydra.run.dir={run_dir}"])
        code = 0
        try:
            main()
        except SystemExit as exit:
            code = exit.code
        out = capsys.readouterr()
        return code, out.out, out.err, run_dir

    return _cli


def read_metrics(out: Path) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())


def spelled(path: Path, fields: set[str], whole: bool = False) -> list[str]:
    """The string literals of `path` (docstrings aside) that name one of `fields` as a word of their own; with `whole`,
    only those that are one of `fields` or a path ending in one (a read, not a message that mentions it)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    names = "|".join(map(re.escape, fields))
    word = re.compile(rf"^(.*/)?({names})$" if whole else rf"(?<![\w.])({names})(?![\w(])")
    return [f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and word.search(node.value)]
