"""Linear layers on packed weights compute what nn.Linear computes, only where they may, and never from a stale pack."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from repinv.errors import RepinvError
from repinv.models import create_model, packed
from repinv.models.packed import _AVAILABLE, _BF16_FAST, _MKL, _ONEDNN, _PACKS, BF16_MAX_ROWS, PackedLinear, fp32_choice
from repinv.models.patchify import PatchConv2d
from repinv.models.surgery import Remove
from repinv.models.taps import resolve_layer

pytestmark = pytest.mark.skipif(not _AVAILABLE, reason="this torch has no MKL packed sgemm")

TINY = {
    "vit_base_patch32_224": dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2),
    "mixer_b16_224": dict(img_size=32, patch_size=8, num_blocks=2, embed_dim=32),
}


def unpacked(net: nn.Module) -> nn.Module:
    """A copy of `net` with torch's own classes back: nn.Linear for PackedLinear, nn.Conv2d for PatchConv2d."""
    plain = copy.deepcopy(net)
    for m in plain.modules():
        if type(m) is PackedLinear:
            m.__class__ = nn.Linear
        elif type(m) is PatchConv2d:
            m.__class__ = nn.Conv2d
    return plain


def output_and_input_grad(net, layer, x, target):
    x = x.clone().requires_grad_(True)
    out = resolve_layer(net, layer)(net, x)
    (out - target).abs().sum().backward()
    return out.detach(), x.grad


FP32_BACKENDS = ["mkl"] * _MKL + ["onednn"] * _ONEDNN


@pytest.mark.parametrize("backend", FP32_BACKENDS)
@pytest.mark.parametrize("name", sorted(TINY))
def test_packed_step_matches_nn_linear_in_output_and_input_gradient(name, backend, monkeypatch):
    monkeypatch.setattr(packed, "FP32_BACKEND", backend)
    model = create_model(name, input_size=32, kwargs=TINY[name])
    linears = [m for m in model.net.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is PackedLinear for m in linears)
    plain = unpacked(model.net)
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        target = resolve_layer(plain, 1)(plain, torch.randn(3, 3, 32, 32))
    _PACKS.clear()
    out, grad = output_and_input_grad(model.net, 1, x, target)
    ref_out, ref_grad = output_and_input_grad(plain, 1, x, target)
    # the packed path really ran (Mixer's token MLP sees transposed, non-contiguous input)
    assert sum(m in _PACKS for m in linears) >= 4
    stem = getattr(model.net, "patch_embed", None) or model.net.stem
    assert stem.proj in _PACKS  # the patch convolution's matmul too
    assert {_PACKS[m][0][1] for m in _PACKS} == {backend}
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.net.parameters())


def test_packs_follow_weight_changes_and_stay_out_of_copies_and_state_dicts():
    layer = PackedLinear(8, 5)
    layer.requires_grad_(False)
    x = torch.randn(4, 8, requires_grad=True)
    layer(x)
    assert layer in _PACKS
    with torch.no_grad():
        layer.weight.mul_(-2.0)
    torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias)
    assert set(layer.state_dict()) == {"weight", "bias"}
    twin = copy.deepcopy(layer)
    assert twin not in _PACKS
    torch.testing.assert_close(twin(x), layer(x))


def test_trainable_weights_no_grad_and_foreign_autocast_take_nn_linear():
    layer = PackedLinear(8, 5)
    x = torch.randn(4, 8, requires_grad=True)
    _PACKS.clear()
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer not in _PACKS
    layer.requires_grad_(False)
    with torch.no_grad():
        layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 weights: autocast's own bf16 matmul
        assert layer(x).dtype == torch.bfloat16
    assert layer not in _PACKS


def test_bf16_weights_under_autocast_pack_up_to_the_row_limit_and_match_nn_linear():
    """Packed only on a CPU with native bf16 (AMX, AVX512-BF16); elsewhere F.linear, and equal either way."""
    layer = PackedLinear(64, 48).requires_grad_(False).to(torch.bfloat16)
    plain = unpacked(layer)
    for rows, packs in ((20, _BF16_FAST), (BF16_MAX_ROWS + 1, False)):
        _PACKS.clear()
        x = torch.randn(rows, 64)
        outs, grads = [], []
        for net in (layer, plain):
            xi = x.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = net(xi)
            out.float().square().sum().backward()
            outs.append(out)
            grads.append(xi.grad)
        assert (layer in _PACKS) is packs and outs[0].dtype == torch.bfloat16 and grads[0].dtype == torch.float32
        torch.testing.assert_close(outs[0], outs[1], rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(grads[0], grads[1], rtol=2e-2, atol=5e-2)


def test_fp32_packs_with_onednn_switch_to_mkl_above_the_row_limit(monkeypatch):
    monkeypatch.setattr(packed, "FP32_BACKEND", "onednn")
    monkeypatch.setattr(packed, "ONEDNN_FP32_MAX_ROWS", 512)
    assert packed._backend(torch.float32, 50) == packed._backend(torch.float32, 512) == "onednn"
    assert packed._backend(torch.float32, 513) == "mkl"
    monkeypatch.setattr(packed, "ONEDNN_FP32_MAX_ROWS", None)
    assert packed._backend(torch.float32, 4096) == "onednn"
    monkeypatch.setattr(packed, "FP32_BACKEND", "mkl")
    assert packed._backend(torch.float32, 50) == packed._backend(torch.float32, 4096) == "mkl"
    assert packed._backend(torch.float16, 50) is None


def test_fp32_pack_library_follows_cpu_features_not_vendor():
    assert fp32_choice(amx=True, capability="AVX512") == ("mkl", None)
    assert fp32_choice(amx=False, capability="AVX512") == ("onednn", None)
    assert fp32_choice(amx=False, capability="AVX2") == ("onednn", 512)
    assert fp32_choice(amx=False, capability="AVX2", mkl=False) == ("onednn", None)
    assert fp32_choice(amx=True, capability="AVX512", onednn=False) == ("mkl", None)
    assert fp32_choice(amx=False, capability="DEFAULT", mkl=False, onednn=False) == (None, None)


@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_flop_counter_counts_packed_matmuls_as_matmuls(backend, monkeypatch):
    monkeypatch.setattr(packed, "FP32_BACKEND", backend)
    layer = PackedLinear(32, 16).requires_grad_(False)
    x = torch.randn(2, 10, 32, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        layer(x).sum().backward()
    assert layer in _PACKS
    assert counter.get_total_flops() == 2 * (2 * 20 * 32 * 16)  # forward and input gradient


def test_remove_by_class_name_still_finds_packed_and_patchified_layers():
    model = create_model("vit_base_patch32_224", input_size=32, kwargs=TINY["vit_base_patch32_224"])
    Remove("Linear")(model)
    Remove("Conv2d")(model)
    assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.net.modules())


WRITES = {
    "data.copy_": lambda layer, new: layer.weight.data.copy_(new),
    "data.mul_": lambda layer, new: layer.weight.data.mul_(-3.0),
    "load_state_dict": lambda layer, new: layer.load_state_dict({**layer.state_dict(), "weight": new}),
    "no_grad mul_": lambda layer, new: layer.weight.mul_(2.0),
}


@pytest.mark.parametrize("backend", FP32_BACKENDS)
@pytest.mark.parametrize("write", sorted(WRITES))
def test_weight_written_in_place_after_a_packed_forward_is_what_the_next_forward_uses(write, backend, monkeypatch):
    monkeypatch.setattr(packed, "FP32_BACKEND", backend)
    torch.manual_seed(0)
    layer = PackedLinear(16, 12).requires_grad_(False)
    x = torch.randn(6, 16, requires_grad=True)
    layer(x)
    assert layer in _PACKS
    with torch.no_grad():
        WRITES[write](layer, torch.randn(12, 16))
    out = layer(x)
    plain = nn.Linear(16, 12)
    plain.load_state_dict(layer.state_dict())
    torch.testing.assert_close(out, plain(x), rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    grad = x.grad.clone()
    x.grad = None
    plain(x).square().sum().backward()
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-5)


def test_patch_conv_weight_written_through_data_is_what_the_next_forward_uses():
    model = create_model("vit_base_patch32_224", input_size=32, kwargs=TINY["vit_base_patch32_224"])
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    conv = model.net.patch_embed.proj
    conv(x)
    assert conv in _PACKS
    conv.weight.data.copy_(torch.randn_like(conv.weight))
    torch.testing.assert_close(conv(x), unpacked(conv)(x), rtol=1e-5, atol=1e-5)


def test_cpu_kernels_none_keeps_torch_layers_with_the_same_numbers():
    plain = create_model("vit_base_patch32_224", input_size=32, kwargs=TINY["vit_base_patch32_224"], cpu_kernels="none")
    fast = create_model("vit_base_patch32_224", input_size=32, kwargs=TINY["vit_base_patch32_224"])
    assert {type(m) for m in plain.net.modules()} & {PackedLinear, PatchConv2d} == set()
    assert type(plain.net.patch_embed.proj) is nn.Conv2d and type(plain.net.blocks[0].mlp.fc1) is nn.Linear
    assert plain.spec["cpu_kernels"] == "none"
    _PACKS.clear()
    outs, grads = [], []
    for net in (plain.net, fast.net):
        x = torch.linspace(-1, 1, 2 * 3 * 32 * 32).view(2, 3, 32, 32).requires_grad_(True)
        out = resolve_layer(net, 1)(net, x)
        out.square().sum().backward()
        outs.append(out)
        grads.append(x.grad)
    assert not any(m in _PACKS for m in plain.net.modules()) and any(m in _PACKS for m in fast.net.modules())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_unknown_cpu_kernels_is_a_clear_error():
    with pytest.raises(RepinvError, match="model.cpu_kernels=packd .*'packed'"):
        create_model("vit_base_patch32_224", input_size=32, kwargs=TINY["vit_base_patch32_224"], cpu_kernels="packd")
