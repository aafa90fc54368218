"""Layer taps: indices and module paths reach the right layer and stop the forward there."""

from __future__ import annotations

import time

import pytest
import timm
import torch
from timm.models.mlp_mixer import MlpMixer

from repinv.errors import RepinvError
from repinv.models.taps import SharedPass, hidden_layer_names, log as taps_log, resolve_layers


@pytest.fixture(scope="module")
def vit():
    return timm.create_model("vit_base_patch32_224", img_size=64, patch_size=16, depth=3, embed_dim=32, num_heads=2).eval()


def test_index_and_module_path_are_the_same_tap_with_the_class_token(vit):
    x = torch.randn(2, 3, 64, 64)
    [index], [path] = resolve_layers(vit, [1]), resolve_layers(vit, ["blocks.1"])
    assert index.label == "L1" and index.module == path.module == "blocks.1"
    full = vit.blocks[1](vit.blocks[0](vit._pos_embed(vit.patch_embed(x))))  # 16 patch tokens and the class token
    assert full.shape == (2, 17, 32)
    assert torch.equal(index(vit, x), path(vit, x))
    assert torch.allclose(index(vit, x), full, atol=1e-6)


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


def test_a_negative_index_counts_from_the_last_layer(vit):
    taps = resolve_layers(vit, [-1, 0, "patch_embed"])
    assert [(t.label, t.module) for t in taps] == [("L2", "blocks.2"), ("L0", "blocks.0"), ("patch_embed", "patch_embed")]
    assert hidden_layer_names(vit) == ["blocks.0", "blocks.1", "blocks.2"]


@pytest.mark.parametrize("twice", [[-1, 2], [2, "blocks.2"], [0, 0]])
def test_one_layer_named_twice_is_refused(vit, twice):
    with pytest.raises(RepinvError, match="more than once"):
        resolve_layers(vit, twice)


@pytest.mark.parametrize("bad", [3, -4, "blocks.9", "patch_embd"])
def test_unknown_layers_list_the_valid_ones(vit, bad):
    with pytest.raises(RepinvError, match="is not a layer of this model") as err:
        resolve_layers(vit, [bad])
    assert "indices 0..2" in str(err.value) and "patch_embed" in str(err.value)


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "mixer":
        return MlpMixer(img_size=64, patch_size=16, num_blocks=3, embed_dim=32).eval()
    arch, kwargs = {
        "vit": ("vit_base_patch32_224", dict(img_size=64, patch_size=16, depth=3, embed_dim=32, num_heads=2)),
        "resnet": ("resnet50", dict(layers=[1, 1, 1, 1])),
    }[name]
    return timm.create_model(arch, **kwargs).eval()


@pytest.mark.parametrize("name,layers", [
    ("vit", [0, 1, 2, "patch_embed"]),
    ("mixer", [2, 0, "stem"]),
    ("resnet", [0, 2, 4, "maxpool"]),
])
def test_shared_pass_gives_each_layer_its_own_output_and_gradient(name, layers):
    """One pass for several layers equals each layer's own forward, rows of different images included."""
    net = _tiny(name)
    taps = resolve_layers(net, layers)
    x = torch.rand(2, 3, 64, 64)
    shared = SharedPass.checked(net, taps, x)
    assert shared is not None
    batch = torch.rand(len(taps) * 2, 3, 64, 64, requires_grad=True)
    groups = batch.split(2)
    outs = shared(net, torch.cat([groups[g] for g in shared.order]), [2] * len(taps))
    sum(o.abs().sum() for o in outs).backward()
    for g, tap in enumerate(taps):
        alone = groups[g].detach().requires_grad_()
        own = tap(net, alone)
        own.abs().sum().backward()
        assert outs[g].shape == own.shape and torch.allclose(outs[g], own, rtol=1e-4, atol=1e-5)
        assert torch.allclose(batch.grad[2 * g : 2 * g + 2], alone.grad, rtol=1e-3, atol=1e-6), tap.label


def test_shared_pass_runs_each_block_on_the_rows_that_still_need_it():
    """Layers 0, 1, 2 with one row each: block 0 sees 3 rows, block 1 two, block 2 one (6 row passes, not 9)."""
    net = _tiny("vit")
    taps = resolve_layers(net, [0, 1, 2])
    x = torch.rand(1, 3, 64, 64)
    shared = SharedPass.checked(net, taps, x)
    seen = []
    handles = [b.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0])) for b in net.blocks]
    shared(net, torch.rand(3, 3, 64, 64), [1, 1, 1])
    for h in handles:
        h.remove()
    assert seen == [3, 2, 1]


def test_a_tap_inside_a_residual_block_is_not_shared(caplog):
    """Splitting rows at a block's norm1 would break its residual sum: the layers then run one by one, and the log says why."""
    net = _tiny("vit")
    taps = resolve_layers(net, ["blocks.0.norm1", 1])
    x = torch.rand(1, 3, 64, 64)
    with caplog.at_level("INFO", logger=taps_log.name):
        assert SharedPass.checked(net, taps, x) is None
    assert "layers blocks.0.norm1, L1 run one forward pass each" in caplog.text


def test_running_out_of_memory_while_checking_the_shared_pass_is_not_taken_for_a_model_it_does_not_fit():
    """An out-of-memory error during the check ends the run with that error instead of silently running layer by layer."""
    def out_of_memory(*_):
        raise torch.OutOfMemoryError("CUDA out of memory")

    net = _tiny("vit")
    net.blocks[1].register_forward_hook(out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        SharedPass.checked(net, resolve_layers(net, [0, 2]), torch.rand(1, 3, 64, 64))


def test_stack_false_runs_one_pass_per_layer():
    """objective.stack=false switches the shared pass off (for models where stacking does not pay)."""
    from repinv.inputs.images import TargetImage
    from repinv.objectives import LayerInversion

    net, image = _tiny("vit"), [TargetImage(name="a", pixels=torch.rand(3, 64, 64))]
    stacked, separate = LayerInversion([0, 2]), LayerInversion([0, 2], stack=False)
    for objective in (stacked, separate):
        objective.setup(net, lambda x: x, image, 0)
    assert stacked.shared is not None and separate.shared is None
    x = torch.rand(2, 3, 64, 64)
    (a, sa), (b, sb) = stacked(net, x), separate(net, x)
    assert torch.allclose(a, b, rtol=1e-4) and torch.allclose(sa["output_l2"], sb["output_l2"], rtol=1e-4)


@pytest.mark.parametrize("slow,expect_shared", [("shared", False), ("single", True)])
def test_stack_auto_keeps_the_faster_way(monkeypatch, slow, expect_shared):
    """objective.stack=auto times a step each way on the run's own view and keeps the faster one (each call of the
    slowed way costs ten seconds on the clock the timing reads, whatever the machine's load)."""
    from types import SimpleNamespace

    import repinv.objectives.layer as layer_module
    from repinv.inputs.images import TargetImage
    from repinv.models.taps import LayerTap
    from repinv.objectives import LayerInversion

    net, image = _tiny("vit"), [TargetImage(name="a", pixels=torch.rand(3, 64, 64))]
    auto = LayerInversion([0, 2])
    auto.setup(net, lambda x: x, image, 0)
    shared = auto.shared
    slowed = SharedPass if slow == "shared" else LayerTap
    real = slowed.__call__
    spent = [0.0]
    monkeypatch.setattr(layer_module, "time", SimpleNamespace(perf_counter=lambda: time.perf_counter() + spent[0]))

    def slow_call(self, *args):
        spent[0] += 10.0
        return real(self, *args)

    monkeypatch.setattr(slowed, "__call__", slow_call)
    auto.tune(net, torch.rand(2, 3, 64, 64))
    assert auto.stacked is expect_shared
    assert auto.shared is (shared if expect_shared else None)


def test_a_resumed_run_keeps_the_stack_choice_of_its_checkpoint():
    from repinv.inputs.images import TargetImage
    from repinv.objectives import LayerInversion

    net, image = _tiny("vit"), [TargetImage(name="a", pixels=torch.rand(3, 64, 64))]
    resumed = LayerInversion([0, 2])
    resumed.setup(net, lambda x: x, image, 0)
    resumed.load_state_dict({"_extra_state": {"stacked": False}}, strict=False)
    resumed.tune(net, torch.rand(2, 3, 64, 64))
    assert resumed.stacked is False and resumed.shared is None


def test_an_index_and_its_module_path_give_the_same_loss():
    """layers=1 and layers=blocks.1 are the same objective on the same image."""
    from repinv.inputs.images import TargetImage
    from repinv.objectives import LayerInversion

    net, image = _tiny("vit"), [TargetImage(name="a", pixels=torch.rand(3, 64, 64))]
    by_index, by_path = LayerInversion([1]), LayerInversion(["blocks.1"])
    for objective in (by_index, by_path):
        objective.setup(net, lambda x: x, image, 0)
    x = torch.rand(1, 3, 64, 64)
    (a, sa), (b, sb) = by_index(net, x), by_path(net, x)
    assert torch.equal(a, b) and torch.equal(sa["noise_shift_l2"], sb["noise_shift_l2"])
