"""Each surgery operation changes exactly what it says; bad specs are clear errors."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file
from torch import nn

import wandb_reader
from conftest import compose_cfg
from repinv.errors import RepinvError
from repinv.models.surgery import Rebuild, Remove, Transplant, apply_surgery


def _model(tmp_path, *overrides):
    return instantiate(compose_cfg(["model=vit_tiny", *overrides], tmp_path).model)


@pytest.fixture
def trained_file(tmp_path):
    """A 'trained' vit_tiny: the same architecture with every tensor moved by noise, saved as safetensors."""
    gen = torch.Generator().manual_seed(1)
    state = {k: (v + 0.1 * torch.randn(v.shape, generator=gen)).contiguous() for k, v in _model(tmp_path).net.state_dict().items()}
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


def test_preset_keeps_the_named_part_of_the_configured_weights_and_resets_the_rest(tmp_path, trained_file):
    path, trained = trained_file
    untrained = _model(tmp_path).net.state_dict()
    cfg = compose_cfg(["model=vit_tiny", f"model.checkpoint={path}", "surgery=trained_input_untrained_encoders"], tmp_path)
    from repinv.pipeline import build

    model = apply_surgery(build(cfg.model), {k: build(op) for k, op in cfg.surgery.items()})
    kept = ("patch_embed.", "pos_embed", "cls_token")
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, trained[key] if key.startswith(kept) else untrained[key]), key
    assert not model.trained and model.surgery == ["trained_input_untrained_encoders"]


def test_presets_compose_in_order_and_reach_run_name_config_and_wandb_tags(run_repinv, trained_file):
    path, trained = trained_file
    records, out = run_repinv("surgery=[trained_pos_embed,no_layernorm]", f"surgery.trained_pos_embed.donor={{checkpoint:{path}}}",
                              "steps=2", "log_every=1", "logger=wandb")
    assert len(records) == 2
    assert "trained_pos_embed:" in (out / "config.yaml").read_text()
    [run] = wandb_reader.find_runs(out)
    info = wandb_reader.run_info(run)
    assert {"trained_pos_embed", "no_layernorm"} <= set(info["tags"])
    assert info["name"].startswith("vit_tiny-trained_pos_embed-no_layernorm-")


@pytest.mark.parametrize("op,message", [
    (Transplant(["patch_embedding"], donor={"pretrained": True}), r"transplant name 'patch_embedding' is neither.*Did you mean 'patch_embed'.*It has .*blocks"),
    (Transplant(["pos_embed"], donor={"name": "resnet50", "pretrained": True}), r"donor resnet50 is another architecture than the model \(vit_base_patch32_224\)"),
    (Transplant(["pos_embed"], donor={"pretrained": False}), r"donor must be trained.*donor.checkpoint=FILE"),
    (Transplant(["pos_embed"], donor={"file": "x"}), r"donor settings \['file'\] are unknown"),
    (Remove("BatchNorm2d"), r"remove pattern 'BatchNorm2d' matches no module of vit_base_patch32_224.*LayerNorm"),
])
def test_bad_specs_are_clear_errors(op, message, tmp_path):
    with pytest.raises(RepinvError, match=message):
        apply_surgery(_model(tmp_path), {"op": op})


def test_donor_with_other_shapes_is_a_clear_error(tmp_path):
    other = _model(tmp_path, "model.kwargs.embed_dim=32").net.state_dict()
    path = tmp_path / "other.pth"
    torch.save(other, path)
    with pytest.raises(RepinvError, match=r"does not fit model.name=vit_base_patch32_224.*size mismatch"):
        apply_surgery(_model(tmp_path), {"t": Transplant(["pos_embed"], donor={"checkpoint": str(path)})})


def test_rebuild_after_other_operations_and_non_operations_are_errors(tmp_path):
    with pytest.raises(RepinvError, match="list it first"):
        apply_surgery(_model(tmp_path), {"cut": Remove("LayerNorm"), "p8": Rebuild(patch_size=8)})
    with pytest.raises(RepinvError, match="surgery.x is not a surgery operation"):
        apply_surgery(_model(tmp_path), {"x": "LayerNorm"})
