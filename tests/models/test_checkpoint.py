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
