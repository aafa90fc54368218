"""Layer taps: indices and module paths reach the right layer and stop the forward there."""

from __future__ import annotations

import pytest
import timm
import torch

from repinv.errors import RepinvError
from repinv.taps import hidden_layer_names, resolve_layers


@pytest.fixture(scope="module")
def vit():
    return timm.create_model("vit_base_patch32_224", img_size=64, patch_size=16, depth=3, embed_dim=32, num_heads=2).eval()


def test_index_tap_matches_full_forward_intermediates(vit):
    x = torch.randn(2, 3, 64, 64)
    [tap] = resolve_layers(vit, [1])
    full = vit.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
    assert tap.label == "L1" and tap.module == "blocks.1"
    assert torch.allclose(tap(vit, x), full)


def test_module_tap_returns_module_output_and_stops_early(vit):
    x = torch.randn(1, 3, 64, 64)
    [tap] = resolve_layers(vit, ["blocks.0.norm1"])
    ran = []
    handle = vit.blocks[1].register_forward_hook(lambda *a: ran.append(1))
    out = tap(vit, x)
    handle.remove()
    expected = vit.blocks[0].norm1(vit._pos_embed(vit.patch_embed(x)))
    assert torch.allclose(out, expected, atol=1e-6)
    assert not ran, "the forward pass must stop at the tapped module"


def test_negative_index_and_dedup(vit):
    taps = resolve_layers(vit, [-1, 2, "patch_embed"])
    assert [t.label for t in taps] == ["L2", "patch_embed"]
    assert hidden_layer_names(vit) == ["blocks.0", "blocks.1", "blocks.2"]


@pytest.mark.parametrize("bad", [3, -4, "blocks.9", "patch_embd"])
def test_unknown_layers_list_the_valid_ones(vit, bad):
    with pytest.raises(RepinvError) as err:
        resolve_layers(vit, [bad])
    assert "indices 0..2" in str(err.value) and "patch_embed" in str(err.value)
