"""Trained weights from a local file load through timm's machinery; missing weights are a clear error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file

from conftest import REPO, compose_cfg
from repinv.engine.pipeline import build
from repinv.errors import RepinvError
from repinv.models import create_model

TINY_MODELS = ["vit_tiny", "mixer_tiny", "resnet_tiny"]


def _saved_state(config: str, tmp_path, seed: int = 123) -> dict[str, torch.Tensor]:
    """The state dict of `config` built with another seed: weights no untrained run would get."""
    model = instantiate(compose_cfg([f"model={config}", f"seed={seed}"], tmp_path).model)
    return {k: v.clone().contiguous() for k, v in model.net.state_dict().items()}


@pytest.mark.parametrize("config", TINY_MODELS)
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_checkpoint_round_trip(config, fmt, tmp_path):
    state = _saved_state(config, tmp_path)
    path = tmp_path / f"weights.{fmt}"
    save_file(state, str(path)) if fmt == "safetensors" else torch.save(state, path)
    untrained = instantiate(compose_cfg([f"model={config}"], tmp_path).model)
    loaded = instantiate(compose_cfg([f"model={config}", f"model.checkpoint={path}"], tmp_path).model)
    assert loaded.trained and not untrained.trained
    got = loaded.net.state_dict()
    assert got.keys() == state.keys()
    assert all(torch.equal(got[k], state[k]) for k in state)
    assert not all(torch.equal(untrained.net.state_dict()[k], state[k]) for k in state), "seeds must give other weights"


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    with pytest.raises(RepinvError, match=r"model.checkpoint=.*nope.safetensors does not exist"):
        create_model("vit_base_patch32_224", checkpoint=str(tmp_path / "nope.safetensors"))


def test_pretrained_offline_names_the_hub_file_and_checkpoint_option(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "repinv", "model=vit_tiny", "model.pretrained=true", "logger=none",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "timm/vit_base_patch32_224" in proc.stderr and "model.safetensors" in proc.stderr
    assert "model.checkpoint=" in proc.stderr




TEN = ["model=vit_tiny", "+model.kwargs.num_classes=10"]  # a head fine-tuned to 10 classes: not timm's pretrained config


def test_a_fine_tuned_head_of_its_own_size_loads_exactly(tmp_path):
    state = {k: v.clone() for k, v in instantiate(compose_cfg([*TEN, "seed=123"], tmp_path).model).net.state_dict().items()}
    path = tmp_path / "ten.pth"
    torch.save(state, path)
    loaded = instantiate(compose_cfg([*TEN, f"model.checkpoint={path}"], tmp_path).model)
    got = loaded.net.state_dict()
    assert loaded.trained and got["head.weight"].shape == (10, 64)
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


@pytest.mark.parametrize("saved,change,message", [
    (["model=vit_tiny"], lambda state: {k: v for k, v in state.items() if not k.startswith("blocks.1.")},
     r"blocks.1.norm1.weight is missing there"),
    (["model=vit_tiny"], lambda state: {f"net.{k}": v for k, v in state.items()}, r"cls_token is missing there, .*\(\d+ more\)"),
    (TEN, lambda state: state, r"head.weight is \(10, 64\) there and \(1000, 64\) here"),
])
def test_a_file_that_does_not_supply_the_whole_model_as_configured_is_refused(saved, change, message, tmp_path):
    state = {k: v.clone() for k, v in instantiate(compose_cfg([*saved, "seed=123"], tmp_path).model).net.state_dict().items()}
    path = tmp_path / "partial.pth"
    torch.save(change(state), path)
    with pytest.raises(RepinvError, match=r"model.checkpoint=.*partial.pth does not fit model.name=vit_base_patch32_224 as "
                                          rf"configured: {message}.*must hold weights for the whole model as configured"):
        build(compose_cfg(["model=vit_tiny", f"model.checkpoint={path}"], tmp_path).model)


@pytest.mark.parametrize("config", ["vit_tiny", "tv_vit_tiny"])
@pytest.mark.parametrize("name", ["junk.pt", "junk.safetensors"])
def test_an_unreadable_checkpoint_file_is_one_paragraph(config, name, tmp_path):
    path = tmp_path / name
    path.write_bytes(b"\x00 not a state dict " * 8)
    with pytest.raises(RepinvError, match=rf"model.checkpoint={path} could not be read as a state dict \(safetensors or torch "
                                          r"file\): \w+: .*Pass a file written by safetensors' save_file") as err:
        build(compose_cfg([f"model={config}", f"model.checkpoint={path}"], tmp_path).model)
    assert "\n" not in str(err.value)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """timm's `test_vit` trained weights as the hub cache holds them after a download (any weights will do)."""
    import huggingface_hub
    import timm

    repo = tmp_path / "hub" / "models--timm--test_vit.r160_in1k"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    save_file({k: v.contiguous() for k, v in timm.create_model("test_vit").state_dict().items()},
              str(repo / "snapshots" / "abc" / "model.safetensors"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_cached_trained_weights_that_do_not_fit_the_kwargs_are_called_so(hub_cache):
    assert create_model("test_vit", pretrained=True).trained, "the cached weights load as they are"
    with pytest.raises(RepinvError, match=r"trained weights for model.name=test_vit do not fit the model "
                                          r"model.kwargs=\{'depth': 1\} builds: Unexpected key\(s\).*blocks.1") as err:
        create_model("test_vit", pretrained=True, kwargs={"depth": 1})
    assert "nothing is cached" not in str(err.value)


def test_trained_weights_whose_head_timm_would_drop_are_refused(hub_cache):
    with pytest.raises(RepinvError, match=r"num_classes=10 with model.pretrained=true: .* a 1000-class head, which timm "
                                          r"would drop"):
        create_model("test_vit", pretrained=True, kwargs={"num_classes": 10})
    assert create_model("test_vit", pretrained=True, kwargs={"num_classes": 0}).trained


def test_a_torchvision_file_that_does_not_fit_names_its_tensors(tmp_path):
    state = _saved_state("tv_vit_tiny", tmp_path)
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("heads.")}, path)
    with pytest.raises(RepinvError, match=r"does not fit torchvision's vit_b_32 .*: heads.head.weight is missing there"):
        build(compose_cfg(["model=tv_vit_tiny", f"model.checkpoint={path}"], tmp_path).model)
