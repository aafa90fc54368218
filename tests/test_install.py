"""A wheel installed without -e, in a fresh environment, runs from any folder (the configs ship inside it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

RUN = ["model=vit_tiny", "layers=[0]", "steps=2", "logger=none"]
# The repository without what builds, runs and version control leave in it: run folders at its root only
# (src/repinv/reporting is a package), build and cache folders anywhere.
RUN_FOLDERS = {"logs", "outputs", "multirun", "wandb", "build", "dist", ".venv"}
CACHES = shutil.ignore_patterns(".git", "*.egg-info", "__pycache__", ".pytest_cache")


def not_source(folder: str, names: list[str]) -> set[str]:
    return set(CACHES(folder, names)) | (RUN_FOLDERS & set(names) if Path(folder) == REPO else set())


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the repository (the build writes into its source tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, tmp / "repo", ignore=not_source)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(tmp / "dist"), str(tmp / "repo")])
    (found,) = (tmp / "dist").glob("repinv-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh environment on the system's packages (torch and the rest) with the wheel installed into it."""
    env = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(env)])
    # --ignore-installed: the system may hold repinv itself (an editable install); the wheel goes into env alone
    _run([str(env / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
          "--disable-pip-version-check", "--quiet", str(wheel)])
    return env


def _clean_env() -> dict:
    """The environment without this checkout on the path, offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def test_wheel_ships_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = REPO / "src" / "repinv" / "conf"
    yamls = sorted(f"repinv/conf/{p.relative_to(conf).as_posix()}" for p in conf.rglob("*.yaml"))
    assert "repinv/conf/hydra/launcher/slurm.yaml" in yamls and "repinv/conf/model/vit_tiny.yaml" in yamls
    assert [y for y in yamls if y not in names] == [], "configs missing from the wheel"
    assert {"repinv/cli.py", "repinv/api.py", "repinv/conf/__init__.py"} <= names
    assert not any(n.startswith(("tests/", "scripts/")) for n in names)


@pytest.mark.slow
def test_installed_wheel_runs_the_command_and_the_python_call_from_another_folder(venv, tmp_path):
    python, env = str(venv / "bin" / "python"), _clean_env()
    _run([str(venv / "bin" / "repinv"), *RUN, "hydra.run.dir=cli_run"], cwd=tmp_path, env=env)
    assert [r["layer"] for r in json.loads((tmp_path / "cli_run" / "metrics.json").read_text())] == ["L0"]

    call = (f"import repinv, sysconfig; r = repinv.run({[*RUN, 'hydra.run.dir=api_run']!r}); "
            "print(repinv.__file__, sysconfig.get_paths()['purelib'], len(r.records), tuple(r.images.shape))")
    where, site, *shape = _run([python, "-c", call], cwd=tmp_path, env=env).stdout.strip().splitlines()[-1].split(" ", 2)
    assert Path(where).resolve().is_relative_to(Path(site).resolve()), f"repinv imported from {where}, not from {site}"
    assert shape == ["1 (1, 3, 64, 64)"]
    assert (tmp_path / "api_run" / "metrics.json").is_file() and (tmp_path / "api_run" / "config.yaml").is_file()
