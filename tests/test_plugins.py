"""A model source, an image parametrisation and a CPU kernel choice of the user's own, defined here and named
by `_target_` from overrides alone; the built-in ones' short names and targets are one run identity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import TINY, compose_cfg
from repinv.engine.identity import config_identity
from repinv.engine.pipeline import run
from repinv.models.packed import PackedLinear
from repinv.models.patchify import PatchConv2d
from repinv.models.sources import TimmSource, for_net
from repinv.params import Pixel

FAST = [*TINY, "steps=3", "logger=none", "priors=none"]


class ShallowTimm(TimmSource):
    """timm's models cut to `depth` blocks: a model source with a setting of its own."""

    built: list[nn.Module] = []

    def __init__(self, depth: int = 2):
        self.depth = depth

    def create(self, name, kwargs, **how):
        net, trained = super().create(name, {**kwargs, "depth": self.depth}, **how)
        ShallowTimm.built.append(net)
        return net, trained


class Scaled(Pixel):
    """Pixels stored `factor` times larger (render and encode stay exact inverses); counts its renders."""

    renders = 0

    def __init__(self, shape, factor: float = 2.0):
        super().__init__(shape)
        self.factor = factor

    def render(self) -> torch.Tensor:
        Scaled.renders += 1
        return self.param / self.factor

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return image.to(self.param.dtype) * self.factor


SEEN: list[tuple[str, nn.Module]] = []


def recording_kernels(net: nn.Module, tag: str = "") -> None:
    """A CPU kernel choice that keeps torch's own layers and notes the net it was given."""
    SEEN.append((tag, net))


def _run(tmp_path, *overrides):
    return run(compose_cfg([*FAST, *overrides], tmp_path / "run"))


def test_a_model_source_defined_here_builds_the_runs_model(tmp_path):
    ShallowTimm.built.clear()
    result = _run(tmp_path, "layers=[-1]", "model.source._target_=test_plugins.ShallowTimm", "+model.source.depth=1")
    [net] = ShallowTimm.built
    assert len(net.blocks) == 1 and isinstance(for_net(net), ShallowTimm) and for_net(net).depth == 1
    assert [r["layer"] for r in result.records] == ["L0"], "the last hidden layer of the one-block model"
    assert all(r["status"] == "finished" for r in result.records)


def test_a_parametrisation_defined_here_is_what_the_run_steps(tmp_path):
    Scaled.renders = 0
    result = _run(tmp_path, "param._target_=test_plugins.Scaled", "+param.factor=4")
    state = torch.load(result.out_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert Scaled.renders >= 3
    assert (state["image_param.param"] / 4).clamp(0, 1).sub(result.images).abs().max() < 1e-5
    assert state["image_param.param"].mean() > 2, "the parameter holds four times the image"


def test_a_cpu_kernel_choice_defined_here_gets_the_net_instead_of_packing_it(tmp_path):
    SEEN.clear()
    result = _run(tmp_path, "model.cpu_kernels._target_=test_plugins.recording_kernels", "+model.cpu_kernels.tag=mine")
    [(tag, net)] = SEEN
    assert tag == "mine" and type(net).__name__ == "VisionTransformer" and len(net.blocks) == 2
    assert not any(isinstance(m, (PackedLinear, PatchConv2d)) for m in net.modules()), "the default packing did not run"
    assert all(r["status"] == "finished" for r in result.records)


@pytest.mark.parametrize("config,short", [("vit_tiny", "timm"), ("tv_vit_tiny", "torchvision")])
def test_a_short_name_and_its_target_are_one_run_identity(config, short, tmp_path):
    def identity(*overrides):
        return config_identity(compose_cfg([f"model={config}", *overrides], tmp_path))

    default = identity()
    assert default == identity(f"model.source={short}", "model.cpu_kernels=packed")
    assert (default["model.source"], default["model.cpu_kernels"]) == (short, "packed"), "as older checkpoints hold them"
    assert identity("surgery=resnet_stem")["surgery.resnet_stem.donor.source"] == short
    assert identity("model.cpu_kernels=none")["model.cpu_kernels"] == "none"
    own = identity("model.source._target_=test_plugins.ShallowTimm")
    assert own["model.source._target_"] == "test_plugins.ShallowTimm" and "model.source" not in own
