"""Model sources: short names of the built-in ones, source-neutral module names, and a new source named by `_target_` alone."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from conftest import compose_cfg
from repinv.errors import RepinvError
from repinv.models import create_model
from repinv.models.packed import PackedLinear
from repinv.models.patchify import PatchConv2d
from repinv.models.sources import GENERIC, ModelSource, TorchvisionSource, for_net
from repinv.models.surgery import Remove
from repinv.models.taps import hidden_layer_names, resolve_layers
from repinv.reporting.figures import input_conv


class TinyNet(nn.Module):
    """A patch convolution and a two-layer MLP over its tokens."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 4, stride=4)
        self.body = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 5))

    def forward(self, x):
        return self.body(self.conv(x).flatten(2).transpose(1, 2))


class TinySource(ModelSource):
    """A source of one model, `tinynet`, whose patch convolution answers to the neutral `patch_embed`."""

    neutral_names = {r"patch_embed": "conv"}

    def create(self, name, kwargs, pretrained=False, weights=None, checkpoint=None):
        if name != "tinynet":
            raise RepinvError(f"model.name={name} is not tinynet")
        return TinyNet(**kwargs), False

    def hidden_layers(self, net):
        return ["conv", "body.0", "body.2"]

    def normalisation(self, net):
        return (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny_config(**changes):
    return OmegaConf.create({"_target_": "repinv.models.create_model", "source": {"_target_": "test_sources.TinySource"},
                             "name": "tinynet", "input_size": 16, "seed": 3, "kwargs": {"width": 6}, **changes})


def test_a_source_defined_here_builds_through_create_model_from_config_alone():
    model = instantiate(tiny_config())
    again, other = instantiate(tiny_config()), instantiate(tiny_config(seed=4))
    assert type(model.source) is TinySource and for_net(model.net) is model.source
    assert model.source.name == "test_sources.TinySource", "a source's name is its dotted path unless it sets one"
    assert (model.mean, model.std, model.input_size, model.trained) == ((0.5,) * 3, (0.25,) * 3, (16, 16), False)
    assert torch.equal(model.net.conv.weight, again.net.conv.weight), "untrained weights follow the seed"
    assert not torch.equal(model.net.conv.weight, other.net.conv.weight)
    assert type(model.net.conv) is PatchConv2d and type(model.net.body[0]) is PackedLinear
    taps = resolve_layers(model.net, ["patch_embed", 1, -1])
    assert [(t.label, t.module) for t in taps] == [("patch_embed", "conv"), ("L1", "body.0"), ("L2", "body.2")]
    x = torch.rand(2, 3, 16, 16)
    assert taps[0](model.net, x).shape == (2, 6, 4, 4) and taps[2](model.net, x).shape == (2, 16, 5)
    assert input_conv(model.net)[0] == "conv"


def test_unknown_source_is_one_paragraph_naming_the_known_ones():
    with pytest.raises(RepinvError, match="model.source=timmm is not a model source") as err:
        create_model("vit_base_patch32_224", source="timmm")
    text = str(err.value)
    assert "model.source=timmm is not a model source" in text and "Did you mean 'timm'" in text
    assert "The built-in sources are timm, torchvision" in text and "model.source._target_=package.module.Class" in text
    assert "\n" not in text


@pytest.mark.parametrize("config,patch_module,block0", [
    ("vit_tiny", "patch_embed", "blocks.0"),
    ("tv_vit_tiny", "conv_proj", "encoder.layers.encoder_layer_0"),
])
def test_neutral_layer_names_reach_the_same_parts_in_timm_and_torchvision(config, patch_module, block0, tmp_path):
    cfg = compose_cfg([f"model={config}", "layers=[patch_embed,0,blocks.0.norm1]"], tmp_path)
    net = instantiate(cfg.model).net
    taps = resolve_layers(net, cfg.layers)
    assert [t.label for t in taps] == ["patch_embed", "L0", "blocks.0.norm1"]
    assert [t.module for t in taps[:2]] == [patch_module, block0]
    assert input_conv(net)[0].startswith(patch_module), "patch_embed is the module holding the image's convolution"
    norm = net.get_submodule(taps[2].module)
    assert isinstance(norm, nn.LayerNorm) and taps[2].module.startswith(block0 + ".")
    x = torch.rand(1, 3, 64, 64)
    assert taps[0](net, x).numel() == net.get_submodule(input_conv(net)[0])(x).numel()


def test_remove_pattern_in_neutral_names_matches_torchvision_spelling(tmp_path):
    model = instantiate(compose_cfg(["model=tv_vit_tiny"], tmp_path).model)
    Remove("blocks.*.norm1")(model)
    layers = list(model.net.encoder.layers)
    assert layers and all(isinstance(layer.ln_1, nn.Identity) and isinstance(layer.ln_2, nn.LayerNorm) for layer in layers)


def test_nets_built_outside_create_model_find_their_source_by_class():
    tv = torchvision.models.get_model("resnet18")
    assert type(for_net(tv)) is TorchvisionSource and hidden_layer_names(tv) == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert for_net(nn.Sequential(nn.Linear(2, 2))) is GENERIC


def test_only_kwargs_that_do_not_fit_become_a_kwargs_error(monkeypatch):
    with pytest.raises(RepinvError, match="do not fit vit_base_patch32_224: .*unexpected keyword argument 'bogus'"):
        create_model("vit_base_patch32_224", input_size=32, kwargs={"bogus": 1})

    def faulty(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(timm, "create_model", faulty)
    with pytest.raises(TypeError, match="unsupported operand"):
        create_model("vit_base_patch32_224", input_size=32, kwargs={"depth": 1})


@pytest.mark.parametrize("name,source,setting,message", [
    ("vit_base_patch32_224", "timm", {"weights": "IMAGENET1K_V1"},
     r"model.weights=IMAGENET1K_V1 names a torchvision weights enum, which timm's vit_base_patch32_224 does not take"),
    ("vit_b_32", "torchvision", {"pretrained": True},
     r"model.pretrained=true is timm's switch, which torchvision's vit_b_32 does not take.*model.weights=ENUM \(IMAGENET1K_V1"),
])
def test_a_loading_setting_of_the_other_library_is_refused(name, source, setting, message):
    with pytest.raises(RepinvError, match=message):
        create_model(name, input_size=64, source=source, **setting)


def test_a_transplant_donor_its_source_builds_untrained_is_refused(tmp_path):
    from repinv.models.surgery import Transplant, apply_surgery

    (tmp_path / "weights.pt").write_bytes(b"")  # a file the source is handed and loads nothing from
    with pytest.raises(RepinvError, match=r"donor \(tinynet, .*\) was built without trained weights: the model source "
                                          r"test_sources.TinySource loaded none"):
        donor = {"checkpoint": str(tmp_path / "weights.pt")}
        apply_surgery(instantiate(tiny_config()), {"t": Transplant(["patch_embed"], donor=donor)})
