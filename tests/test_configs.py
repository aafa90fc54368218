"""Every config file composes, and the README's commands are what CI and the Makefile run."""

from __future__ import annotations

import functools
import re

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.plugins.launcher import Launcher
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from conftest import REPO, compose_cfg
from repinv.conf import NEUTRAL, group_options

CONF = REPO / "src" / "repinv" / "conf"
# every config group folder (not hydra/, not the package's own __pycache__/)
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra" and not p.name.startswith(("__", ".")))
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]


def _scalars(node: dict, prefix: str):
    """(dotted key, value) of every plain value a config file sets itself (no interpolations, no defaults list)."""
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key == "defaults" or key == "hydra" or isinstance(value, str) and "${" in value:
            continue
        if isinstance(value, dict):
            yield from _scalars(value, path)
        elif not isinstance(value, list):
            yield path, value


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_composes_and_resolves(group, option, tmp_path):
    cfg = compose_cfg([f"{group}={option}"], tmp_path)
    OmegaConf.to_container(cfg, resolve=True)
    path = CONF / group / f"{option}.yaml"
    root = "" if path.read_text().startswith("# @package _global_") else group
    for key, value in _scalars(yaml.safe_load(path.read_text()) or {}, root):
        composed = OmegaConf.select(cfg, key)
        assert composed == value, f"{group}={option} composes {key}={composed}, its file says {value}"
    if group in ("optimizer", "scheduler") and cfg[group] is not None:
        assert callable(instantiate(cfg[group])), f"{group}={option} must build a partial"


@pytest.mark.parametrize("launcher", sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml")))
def test_each_launcher_config_is_hydras_launcher_with_its_files_settings(launcher):
    """hydra/launcher=X puts X's settings under hydra.launcher, and its _target_ is a Hydra launcher that imports."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        node = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True).hydra.launcher
    GlobalHydra.instance().clear()
    assert issubclass(get_class(node._target_), Launcher), node._target_
    composed = OmegaConf.to_container(node, resolve=False)
    path = CONF / "hydra" / "launcher" / f"{launcher}.yaml"
    for key, value in _scalars(yaml.safe_load(path.read_text()), ""):
        assert functools.reduce(dict.get, key.split("."), composed) == value, f"hydra/launcher={launcher}: {key}"


def test_every_group_has_a_default():
    for group in GROUPS:
        assert (CONF / group / "default.yaml").is_file(), f"conf/{group}/ has no default.yaml"


def test_readme_commands_are_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, flags=re.S)
    commands = [line.strip() for b in blocks for line in b.splitlines() if line.strip() and not line.startswith("#")]
    assert "make run" in commands and "make test" in commands, "README must show `make run` and `make test`"
    assert re.search(r"^make test$", ci, flags=re.M), ".ci/run must run exactly `make test`"
    for target in ("run", "test"):
        rule = re.search(rf"^{target}: install.*?\n((?:\t.*\n)+)", makefile, flags=re.M)
        assert rule, f"make {target} must depend on install"
    assert "pip" in re.search(r"^install:.*?\n((?:\t.*\n)+)", makefile, flags=re.M).group(1)
    assert "-m repinv" in makefile and "-m pytest" in makefile


@pytest.mark.parametrize("override,respelled", [
    ("regularizer=none", "priors=none"),
    ("regularizer.blur.sigma_start=1", "priors.blur.sigma_start=1"),
    ("+regularizer.tv._target_=repinv.priors.TotalVariation", "+priors.tv._target_=repinv.priors.TotalVariation"),
    ("++regularizer.jitter.pixels=4", "++priors.jitter.pixels=4"),
    ("~regularizer.blur", "~priors.blur"),
    ("regularizer=blur,tv", "priors=blur,tv"),
    ("regularizers=none", "regularizers=none"),
    ("model.regularizer=1", "model.regularizer=1"),
    ("hydra/launcher=slurm", "hydra/launcher=slurm"),
    ("-m", "-m"),
])
def test_the_priors_former_name_is_respelled_only_as_a_first_key(override, respelled):
    from repinv.conf import respell, respell_key

    assert respell(override) == respelled
    assert respell_key("regularizer.blur.sigma_end") == "priors.blur.sigma_end" and respell_key("model.seed") == "model.seed"


@pytest.mark.parametrize("override,key", [
    ("steps=3", "steps"), ("+priors.tv.weight=1", "priors.tv.weight"), ("++trainer.devices=2", "trainer.devices"),
    ("~priors.blur", "priors.blur"), ("image='a=b.png'", "image"), ("hydra/launcher=slurm", "hydra/launcher"),
])
def test_an_override_names_the_key_it_sets_whatever_its_prefix(override, key):
    """The ledger's cost plan, its config check and the sweep summary tell overrides apart by this key."""
    from repinv.conf import override_key

    assert override_key(override) == key


@pytest.mark.parametrize("group", sorted(NEUTRAL))
def test_the_option_suggested_for_group_null_leaves_the_learning_rate_as_configured(group, tmp_path):
    """`scheduler=null` is refused with `scheduler=<neutral>` as the way to leave the schedule out: that option must
    exist and keep the optimiser's learning rate over the whole run."""
    import torch

    option, _ = NEUTRAL[group]
    assert option in group_options(group)
    cfg = compose_cfg([f"{group}={option}", "steps=10", "optimizer.lr=0.3"], tmp_path)
    opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    sched = instantiate(cfg[group])(opt)
    lrs = []
    for _ in range(cfg.steps):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [0.3] * cfg.steps
