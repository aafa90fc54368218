"""An input size the model's input layer cannot take is refused before the run; one it can take runs and sees the image."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from conftest import TINY, compose_cfg
from repinv.models import create_model

FAST = [*TINY, "steps=2", "logger=none"]
RESNET_TINY = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}


@pytest.mark.parametrize("overrides,given", [
    (["model=vit_tiny", "model.input_size=8"], "model.input_size=8 "),
    (["model=vit_tiny", "model.input_size=[64,8]"], "model.input_size=[64, 8] "),
    (["model=mixer_tiny", "model.input_size=8"], "model.input_size=8 "),
])
def test_an_input_smaller_than_the_patch_is_refused_before_the_run_folder_is_written(overrides, given, cli):
    """Run, it would end with every number 0 (no patch left: the layers no longer see the image) or in a kernel's error."""
    code, _, err, run_dir = cli(*FAST, *overrides)
    message = " ".join(err.split())
    assert code == 2 and err.startswith("repinv: error: ") and "Traceback" not in err and "\n\n" not in err.strip(), err
    assert given in message and "16x16 patch" in message and "e.g. model.input_size=224." in message, message
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "metrics.json").exists()


def test_an_input_of_one_patch_is_taken(tmp_path):
    model = instantiate(compose_cfg(["model=mixer_tiny", "model.input_size=16"], tmp_path).model)
    assert model.source.min_input_size(model.net) == (16, 16) and model.net(torch.zeros(1, 3, 16, 16)).isfinite().all()


def test_a_resnet_takes_any_input_as_its_stem_pads_it():
    """conv1 (7x7, padding 3) and the max pool pad a 1-pixel image to an output that still depends on it."""
    model = create_model("resnet18", input_size=1, kwargs=RESNET_TINY)
    assert model.source.min_input_size(model.net) == (1, 1)
    image = torch.rand(1, 3, 1, 1, requires_grad=True)
    model.net(image).square().sum().backward()
    assert image.grad.abs().sum() > 0
