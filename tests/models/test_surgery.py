"""Each surgery operation changes exactly what it says; bad specs are clear errors."""

from __future__ import annotations

import csv

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file
from torch import nn

import wandb_reader
from conftest import compose_cfg
from repinv.errors import RepinvError
from repinv.models.surgery import Rebuild, Remove, Stem, Transplant, apply_surgery
from repinv.models.taps import hidden_layer_names, resolve_layer
from repinv.reporting.figures import input_conv


def _model(tmp_path, *overrides):
    return instantiate(compose_cfg(["model=vit_tiny", *overrides], tmp_path).model)


@pytest.fixture
def trained_file(tmp_path):
    """A 'trained' vit_tiny: the same architecture with every tensor moved by noise, saved as safetensors."""
    gen = torch.Generator().manual_seed(1)
    state = {k: (v + 0.1 * torch.randn(v.shape, generator=gen)).contiguous()
             for k, v in _model(tmp_path).net.state_dict().items()}
    path = tmp_path / "trained.safetensors"
    save_file(state, str(path))
    return path, state


def test_transplant_copies_exactly_the_named_parts(tmp_path, trained_file):
    path, trained = trained_file
    model = _model(tmp_path)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    ops = {"trained_input": Transplant(["patch_embed", "pos_embed", "blocks.0.norm1.weight"], donor={"checkpoint": str(path)})}
    model = apply_surgery(model, ops)
    after = model.net.state_dict()
    copied = {"patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "blocks.0.norm1.weight"}
    for key in after:
        expected = trained[key] if key in copied else before[key]
        assert torch.equal(after[key], expected), key
    assert not any(torch.equal(trained[k], before[k]) for k in after), "every donor tensor must differ"
    assert model.surgery == ["trained_input"] and not model.trained
    assert not any(p.requires_grad for p in model.net.parameters())


def test_remove_layernorm_leaves_none_and_changes_the_output(tmp_path):
    mixer = instantiate(compose_cfg(["model=mixer_tiny"], tmp_path).model)
    norms = [n for n, m in mixer.net.named_modules() if isinstance(m, nn.LayerNorm)]
    x = torch.rand(1, 3, 64, 64)
    out = mixer.net.forward_features(x)
    mixer = apply_surgery(mixer, {"no_layernorm": Remove("LayerNorm")})
    assert len(norms) == 5 and not any(isinstance(m, nn.LayerNorm) for m in mixer.net.modules())
    assert all(isinstance(mixer.net.get_submodule(n), nn.Identity) for n in norms)
    assert not torch.allclose(mixer.net.forward_features(x), out)


def test_remove_by_path_pattern_keeps_other_norms(tmp_path):
    model = apply_surgery(_model(tmp_path), {"cut": Remove("blocks.*.norm1")})
    assert all(isinstance(b.norm1, nn.Identity) and isinstance(b.norm2, nn.LayerNorm) for b in model.net.blocks)


def test_rebuild_with_patch_size(tmp_path):
    model = apply_surgery(_model(tmp_path), {"patch8": Rebuild(patch_size=8)})
    assert model.net.patch_embed.proj.kernel_size == (8, 8) and model.net(torch.rand(1, 3, 64, 64)).shape == (1, 1000)
    assert model.surgery == ["patch8"]


@pytest.mark.parametrize("model_name,patch,read,expected", [
    ("mixer_b16", 8, lambda net: (net.stem.proj.kernel_size, len(net.blocks), net.embed_dim), ((8, 8), 12, 768)),
    ("convmixer", 14, lambda net: (net.stem[0].kernel_size, len(net.blocks), net.blocks[0][0].fn[0].kernel_size,
                                   type(net.stem[1]).__name__), ((14, 14), 32, (7, 7), "ReLU")),
])
def test_a_rebuild_of_a_preset_whose_entry_point_fixes_its_sizes_keeps_the_others(tmp_path, model_name, patch, read,
                                                                                   expected):
    """mixer_b16_224 and convmixer_768_32 state their own sizes: a rebuild with another patch size is that model with
    that patch size (Mixer-B's 12 blocks of width 768; ConvMixer-768/32's kernel 7 and ReLU), not the class's
    defaults."""
    with torch.device("meta"):
        model = apply_surgery(_model(tmp_path, f"model={model_name}"), {"patch": Rebuild(patch_size=patch)})
    assert read(model.net) == expected


@pytest.mark.parametrize("model_name,size_kwarg", [("vit_tiny", "img_size"), ("tv_vit_tiny", "image_size")])
def test_a_rebuild_at_another_input_size_feeds_the_model_at_that_size(tmp_path, model_name, size_kwarg):
    """Each source spells the input size its own way; the rebuilt model's input size follows either spelling."""
    model = apply_surgery(_model(tmp_path, f"model={model_name}"), {"big": Rebuild(**{size_kwarg: 96})})
    assert model.input_size == (96, 96)
    assert model.net(torch.rand(1, 3, 96, 96)).shape == (1, 1000)


def test_preset_keeps_the_named_part_of_the_configured_weights_and_resets_the_rest(tmp_path, trained_file):
    path, trained = trained_file
    untrained = _model(tmp_path).net.state_dict()
    cfg = compose_cfg(["model=vit_tiny", f"model.checkpoint={path}", "surgery=trained_input_untrained_encoders"], tmp_path)
    from repinv.engine.pipeline import build

    model = apply_surgery(build(cfg.model), {k: build(op) for k, op in cfg.surgery.items()})
    kept = ("patch_embed.",)  # the study's trained input convolution; class token and position embeddings untrained
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, trained[key] if key.startswith(kept) else untrained[key]), key
    assert not model.trained and model.surgery == ["trained_input_untrained_encoders"]


def test_two_presets_without_a_donor_keep_both_parts_of_the_configured_weights(tmp_path, trained_file):
    path, _ = trained_file
    trained = _model(tmp_path, f"model.checkpoint={path}").net.state_dict()
    untrained = _model(tmp_path).net.state_dict()
    cfg = compose_cfg(["model=vit_tiny", f"model.checkpoint={path}", "surgery=[trained_patch_embed,trained_pos_embed]"], tmp_path)
    from repinv.engine.pipeline import build

    model = apply_surgery(build(cfg.model), {k: build(op) for k, op in cfg.surgery.items()})
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, trained[key] if key.startswith(("patch_embed.", "pos_embed")) else untrained[key]), key
    assert not model.trained and model.surgery == ["trained_patch_embed", "trained_pos_embed"]


def test_a_donor_is_built_from_its_own_loading_settings_not_the_models(tmp_path, trained_file, monkeypatch):
    """A model loaded from a checkpoint with a donor of `pretrained: true`: the donor is timm's trained weights,
    not the model's checkpoint again (which would make the transplant copy the model's own tensors)."""
    import repinv.models.surgery as surgery

    path, _ = trained_file
    model = _model(tmp_path, f"model.checkpoint={path}")
    built = []

    def create(**spec):
        built.append(spec)
        raise RepinvError("stop after the donor's settings")

    monkeypatch.setattr(surgery, "create_model", create)
    with pytest.raises(RepinvError, match="stop after the donor's settings"):
        apply_surgery(model, {"pos": Transplant(["pos_embed"], donor={"pretrained": True})})
    [donor] = built
    assert (donor["pretrained"], donor["checkpoint"], donor["weights"]) == (True, None, None)
    assert donor["name"] == model.arch and donor["seed"] == model.spec["seed"]


def test_a_transplant_without_a_donor_into_a_model_without_trained_weights_changes_nothing(tmp_path, trained_file):
    path, _ = trained_file
    model = apply_surgery(_model(tmp_path), {"pos": Transplant(["pos_embed"], donor={"checkpoint": str(path)})})
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    with pytest.warns(UserWarning, match=r"configured without trained weights and without a donor changes nothing"):
        model = apply_surgery(model, {"norm": Transplant(["blocks.0.norm1"])})
    assert all(torch.equal(v, before[k]) for k, v in model.net.state_dict().items()), "the donor's pos_embed must stay"


def test_presets_compose_in_order_and_reach_run_name_config_and_wandb_tags(run_repinv, trained_file):
    path, trained = trained_file
    records, out = run_repinv("surgery=[trained_pos_embed,no_layernorm]",
                              f"surgery.trained_pos_embed.donor={{checkpoint:{path}}}", "steps=2", "log_every=1", "logger=wandb")
    assert len(records) == 2
    assert "trained_pos_embed:" in (out / "config.yaml").read_text()
    [run] = wandb_reader.find_runs(out)
    info = wandb_reader.run_info(run)
    assert {"trained_pos_embed", "no_layernorm"} <= set(info["tags"])
    assert info["name"].startswith("vit_tiny-trained_pos_embed-no_layernorm-")


@pytest.mark.parametrize("op,message", [
    (Transplant(["patch_embedding"], donor={"pretrained": True}),
     r"transplant name 'patch_embedding' is neither.*Did you mean 'patch_embed'.*It has .*blocks"),
    (Transplant(["pos_embed"], donor={"name": "resnet50", "pretrained": True}),
     r"donor resnet50 is another architecture than the model \(vit_base_patch32_224\)"),
    (Transplant(["pos_embed"], donor={"pretrained": False}), r"donor must be trained.*donor.checkpoint=FILE"),
    (Transplant(["pos_embed"], donor={"file": "x"}), r"donor settings \['file'\] are unknown"),
    (Remove("BatchNorm2d"), r"remove pattern 'BatchNorm2d' matches no module of vit_base_patch32_224.*LayerNorm"),
])
def test_bad_specs_are_clear_errors(op, message, tmp_path):
    with pytest.raises(RepinvError, match=message):
        apply_surgery(_model(tmp_path), {"op": op})


def test_transplant_of_a_removed_module_is_a_clear_error(tmp_path, trained_file):
    path, _ = trained_file
    ops = {"no_layernorm": Remove("LayerNorm"), "norm1": Transplant(["blocks.0.norm1"], donor={"checkpoint": str(path)})}
    with pytest.raises(RepinvError, match=r"transplant name 'blocks.0.norm1' is a module of .* \(Identity\) that holds "
                                          r"no parameters or buffers.*Put the transplant first"):
        apply_surgery(_model(tmp_path), ops)


def test_a_donor_setting_of_the_other_library_is_refused(tmp_path):
    with pytest.raises(RepinvError, match=r"transplant donor .* could not be built: model.pretrained=true is timm's switch"):
        apply_surgery(_model(tmp_path, "model=tv_vit_tiny"), {"t": Transplant(["patch_embed"], donor={"pretrained": True})})


def test_an_unreadable_donor_file_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"\x00 not a state dict " * 8)
    with pytest.raises(RepinvError, match=r"transplant donor .* could not be built: model.checkpoint=.*junk.pt could not be "
                                          r"read as a state dict \(safetensors or torch file\)"):
        apply_surgery(_model(tmp_path), {"t": Transplant(["patch_embed"], donor={"checkpoint": str(path)})})


def test_donor_with_other_shapes_is_a_clear_error(tmp_path):
    other = _model(tmp_path, "model.kwargs.embed_dim=32").net.state_dict()
    path = tmp_path / "other.pth"
    torch.save(other, path)
    with pytest.raises(RepinvError, match=r"does not fit model.name=vit_base_patch32_224 as configured: "
                                          r"cls_token is \(1, 1, 32\) there and \(1, 1, 64\) here"):
        apply_surgery(_model(tmp_path), {"t": Transplant(["pos_embed"], donor={"checkpoint": str(path)})})


def test_rebuild_after_other_operations_and_non_operations_are_errors(tmp_path):
    with pytest.raises(RepinvError, match="list it first"):
        apply_surgery(_model(tmp_path), {"cut": Remove("LayerNorm"), "p8": Rebuild(patch_size=8)})
    with pytest.raises(RepinvError, match="surgery.x is not a surgery operation"):
        apply_surgery(_model(tmp_path), {"x": "LayerNorm"})


# resnet_tiny as a donor: timm's resnet18 with one block per stage; its conv1 is ResNet50's (64 filters, 7x7, stride 2)
TINY_RESNET = {"name": "resnet18", "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}}


@pytest.fixture
def resnet_file(tmp_path):
    """A 'trained' resnet_tiny: its untrained weights moved by noise, saved as a torch file."""
    net = instantiate(compose_cfg(["model=resnet_tiny"], tmp_path).model).net
    gen = torch.Generator().manual_seed(2)
    state = {k: v + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
             for k, v in net.state_dict().items()}
    path = tmp_path / "resnet.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("vit,encoders", [("vit_tiny", ["blocks.0", "blocks.1"]),
                                           ("tv_vit_tiny", [f"encoder.layers.encoder_layer_{i}" for i in range(12)])])
def test_stem_runs_the_donor_conv_first_and_counts_it_as_layer_0(tmp_path, resnet_file, vit, encoders):
    path, state = resnet_file
    model = _model(tmp_path, f"model={vit}")
    vit_state = {k: v.clone() for k, v in model.net.state_dict().items()}
    model = apply_surgery(model, {"resnet_stem": Stem({**TINY_RESNET, "checkpoint": str(path)}, layers=["conv1"], channels=3)})
    net, x = model.net, torch.rand(2, 3, 64, 64)
    assert torch.equal(net.stem.conv1.weight, state["conv1.weight"])
    assert all(torch.equal(net.state_dict()[k], v) for k, v in vit_state.items()), "the ViT must stay as configured"
    assert hidden_layer_names(net) == ["stem", *encoders]
    assert model.mean == (0.485, 0.456, 0.406) and model.surgery == ["resnet_stem"] and not model.trained
    # layer 0: the first three conv1 maps (32x32 for a 64x64 image), resized to the ViT's 64x64 input
    conv = torch.nn.functional.conv2d(x, state["conv1.weight"], stride=2, padding=3)[:, :3]
    expected = torch.nn.functional.interpolate(conv, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resolve_layer(net, 0)(net, x), expected)
    torch.testing.assert_close(resolve_layer(net, "stem")(net, x), expected)
    assert resolve_layer(net, "stem.conv1")(net, x).shape == (2, 64, 32, 32)
    torch.testing.assert_close(resolve_layer(net, "stem.maps")(net, x), conv)  # the three maps before the resize
    assert input_conv(net)[0] == "stem.conv1", "the filters a run draws are the stem's: they see the image"
    entry = "patch_embed" if vit == "vit_tiny" else "conv_proj"
    assert resolve_layer(net, entry)(net, x).shape == ((2, 16, 64) if vit == "vit_tiny" else (2, 768, 2, 2))
    first, last = resolve_layer(net, 1)(net, x), resolve_layer(net, -1)(net, x)
    assert first.shape == last.shape == ((2, 17, 64) if vit == "vit_tiny" else (2, 5, 768))  # tokens, class token kept
    # the encoders see the stem's maps, not the image
    plain = _model(tmp_path, f"model={vit}").net
    assert not torch.allclose(resolve_layer(plain, 0)(plain, x), first)
    assert net(x).shape == (2, 1000)


def test_stem_preset_inversion_improves_the_image(run_repinv):
    records, out = run_repinv("surgery=resnet_stem", "surgery.resnet_stem.donor.name=resnet18", "layers=[0,1]", "logger=csv")
    rows = list(csv.DictReader(open(out / "csv" / "metrics.csv")))
    assert [r["layer"] for r in records] == ["L0", "L1"]
    for r in records:
        key = f"{r['image']}/{r['layer']}"
        assert r["psnr"] > float(rows[0][f"psnr/{key}"]) + 3, f"{key}: PSNR did not improve over the noise"
        assert r["output_l2"] < 0.5 * float(rows[0][f"output_l2/{key}"]), f"{key}: output L2 did not halve"
    assert "resnet_stem:" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("model,op,message", [
    ("resnet_tiny", Stem(TINY_RESNET), r"a stem goes in front of a ViT's encoder stack, but resnet18 is a ResNet"),
    ("vit_tiny", Stem(TINY_RESNET, layers=["conv_1"]),
     r"stem layer 'conv_1' is not a module of the donor resnet18\. Did you mean 'conv1'.*It has .*layer1"),
    ("vit_tiny", Stem(TINY_RESNET, channels=65),
     r"stem channels=65 but resnet18's conv1 gives 64 channels; pick channels from 1 to 64"),
    ("vit_tiny", Stem({**TINY_RESNET, "name": "resnet_51"}),
     r"stem donor .* could not be built: model.name=resnet_51 is not a timm architecture"),
])
def test_bad_stems_are_clear_errors(tmp_path, model, op, message):
    with pytest.raises(RepinvError, match=message):
        apply_surgery(_model(tmp_path, f"model={model}"), {"stem": op})


def test_stem_twice_or_without_a_donor_name_is_an_error(tmp_path):
    with pytest.raises(RepinvError, match="needs a model name"):
        Stem({"pretrained": True})
    with pytest.raises(RepinvError, match="already has a stem"):
        apply_surgery(_model(tmp_path), {"a": Stem(TINY_RESNET), "b": Stem(TINY_RESNET)})


def test_a_transplant_without_a_donor_after_a_stem_is_refused_and_before_it_keeps_its_part(tmp_path, trained_file,
                                                                                         resnet_file):
    """After a stem the model counts as untrained whatever its ViT holds: the transplant would keep every trained
    weight. Before the stem it untrains all but its part."""
    path, trained = trained_file
    stem, graft = Stem({**TINY_RESNET, "checkpoint": str(resnet_file[0])}), Transplant(["patch_embed"])
    with pytest.raises(RepinvError, match=r"comes after a stem in surgery \(stem\).*Put the transplant before the stem"):
        apply_surgery(_model(tmp_path, f"model.checkpoint={path}"), {"stem": stem, "graft": graft})
    net = apply_surgery(_model(tmp_path, f"model.checkpoint={path}"), {"graft": graft, "stem": stem}).net.state_dict()
    assert torch.equal(net["patch_embed.proj.weight"], trained["patch_embed.proj.weight"])
    assert not torch.equal(net["blocks.0.attn.qkv.weight"], trained["blocks.0.attn.qkv.weight"])
