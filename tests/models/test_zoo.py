"""Every model config builds, its layer indices and module paths work, and it inverts a step."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_cfg, read_metrics
from repinv.models.taps import hidden_layer_names, resolve_layers

# config -> (timm name, input size, a module path that exists in it)
BIG = {
    "vit_l_16": ("vit_large_patch16_224", 512, "blocks.0.norm1"),
    "mixer_b16": ("mixer_b16_224", 224, "blocks.0.norm1"),
    "mixer_l16": ("mixer_l16_224", 224, "blocks.0.norm1"),
    "mixer_b8": ("mixer_b16_224", 224, "stem.proj"),
    "mixer_l8": ("mixer_l16_224", 224, "stem.proj"),
    "resnet50": ("resnet50", 224, "conv1"),
    "convmixer": ("convmixer_768_32", 224, "stem.0"),
}
# the same configs shrunk through extra timm kwargs, so building them is cheap
SHRINK = {
    "vit_l_16": ["model.input_size=64", "+model.kwargs.depth=2", "+model.kwargs.embed_dim=32", "+model.kwargs.num_heads=2"],
    "mixer_b16": ["model.input_size=64", "+model.kwargs.num_blocks=2", "+model.kwargs.embed_dim=32"],
    "mixer_l16": ["model.input_size=64", "+model.kwargs.num_blocks=2", "+model.kwargs.embed_dim=32"],
    "mixer_b8": ["model.input_size=32", "++model.kwargs.num_blocks=2", "++model.kwargs.embed_dim=32"],
    "mixer_l8": ["model.input_size=32", "++model.kwargs.num_blocks=2", "++model.kwargs.embed_dim=32"],
    "resnet50": ["model.input_size=64", "+model.kwargs.layers=[1,1,1,1]", "+model.kwargs.channels=[8,16,32,64]"],
    "convmixer": ["model.input_size=64", "+model.kwargs.dim=16", "+model.kwargs.depth=2"],
}


@pytest.mark.parametrize("config", sorted(BIG))
def test_big_config_composes_and_its_shrunk_build_reaches_every_layer(config, tmp_path):
    name, size, module = BIG[config]
    cfg = compose_cfg([f"model={config}"], tmp_path)
    assert (cfg.model.name, cfg.model.input_size, cfg.model.label, cfg.model.pretrained) == (name, size, config, False)
    model = instantiate(compose_cfg([f"model={config}", *SHRINK[config]], tmp_path).model)
    assert model.arch == name and not model.trained
    n = len(hidden_layer_names(model.net))
    assert n >= 2
    x = torch.rand(1, 3, *model.input_size, requires_grad=True)
    taps = resolve_layers(model.net, [*range(n), module])
    outs = [tap(model.net, x) for tap in taps]
    assert taps[-1].module == module and all(o.ndim >= 3 for o in outs)
    assert resolve_layers(model.net, [-1])[0].module == taps[n - 1].module
    outs[0].abs().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_mixer_b8_has_patch_8_and_four_times_the_tokens(tmp_path):
    b8 = instantiate(compose_cfg(["model=mixer_b8", *SHRINK["mixer_b8"]], tmp_path).model).net
    b16 = instantiate(compose_cfg(["model=mixer_b16", *SHRINK["mixer_b8"]], tmp_path).model).net
    assert b8.stem.proj.kernel_size == (8, 8) and b16.stem.proj.kernel_size == (16, 16)
    assert b8.stem.num_patches == 4 * b16.stem.num_patches == 16


def test_vit_l_16_position_embeddings_follow_the_input_size(tmp_path):
    model = instantiate(compose_cfg(["model=vit_l_16", *SHRINK["vit_l_16"][1:], "model.input_size=128"], tmp_path).model)
    assert model.net.pos_embed.shape[1] == 1 + (128 // 16) ** 2


@pytest.mark.parametrize("config,layers", [("mixer_tiny", "[0,blocks.1.norm1]"), ("resnet_tiny", "[1,conv1]"),
                                           ("convmixer_tiny", "[0,stem.0]")])
def test_tiny_config_inverts(config, layers, run_repinv):
    records, out = run_repinv(f"model={config}", f"layers={layers}", "steps=2", "log_every=1", "logger=none")
    metrics = read_metrics(out)
    assert len(records) == 2 and [m["model"] for m in metrics] == [config, config]
    assert all(m["steps"] == 2 and m["status"] == "finished" for m in metrics)
