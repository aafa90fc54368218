"""torchvision as a model source: the study's own models, through the same taps and runs."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file

from conftest import compose_cfg
from repinv.engine.pipeline import build
from repinv.errors import RepinvError
from repinv.inputs.images import load_images
from repinv.models import create_model
from repinv.models.surgery import Remove, apply_surgery
from repinv.models.taps import resolve_layers

TV_TINY = ["model=tv_vit_tiny", "optimizer.lr=1.0"]


def test_inversion_at_an_index_and_a_module_path(run_repinv):
    records, out = run_repinv(*TV_TINY, "layers=[1,encoder.layers.encoder_layer_0.ln_1]", "logger=csv")
    assert [r["layer"] for r in records] == ["L1", "encoder.layers.encoder_layer_0.ln_1"]
    assert records[0]["module"] == "encoder.layers.encoder_layer_1"
    first = (out / "csv" / "metrics.csv").read_text().splitlines()
    header, row0 = first[0].split(","), first[1].split(",")
    for r in records:
        start = float(row0[header.index(f"psnr/chelsea/{r['layer']}")])
        assert r["psnr"] > start + 3, r


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_round_trip(tmp_path, suffix):
    donor = create_model("vit_b_32", source="torchvision", input_size=64, seed=7, kwargs={"image_size": 64})
    state = {k: v.contiguous() for k, v in donor.net.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = create_model("vit_b_32", source="torchvision", input_size=64, seed=0, checkpoint=str(path),
                          kwargs={"image_size": 64})
    assert loaded.trained
    for k, v in loaded.net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_weights_trained_at_another_size_get_resampled_position_embeddings(tmp_path):
    donor = create_model("vit_b_32", source="torchvision", input_size=64, kwargs={"image_size": 64})
    torch.save(donor.net.state_dict(), tmp_path / "w.pth")
    big = create_model("vit_b_32", source="torchvision", input_size=96, checkpoint=str(tmp_path / "w.pth"),
                       kwargs={"image_size": 96})
    assert big.net.encoder.pos_embedding.shape == (1, 10, 768)
    assert torch.equal(big.net.conv_proj.weight, donor.net.conv_proj.weight)


def test_torchvision_and_timm_are_different_models():
    [img] = load_images("chelsea", 64)
    x = img.pixels[None]
    tv = create_model("vit_b_32", source="torchvision", input_size=64, kwargs={"image_size": 64})
    tm = create_model("vit_base_patch32_224", input_size=64, kwargs={"img_size": 64})
    [tv_tap], [tm_tap] = resolve_layers(tv.net, [0]), resolve_layers(tm.net, [0])
    a, b = tv_tap(tv.net, x), tm_tap(tm.net, x)
    assert type(tv.net).__module__.startswith("torchvision") and type(tm.net).__module__.startswith("timm")
    assert a.numel() != b.numel() or not torch.allclose(a.flatten(), b.flatten(), atol=1e-3)


def test_offline_weights_and_bad_names_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RepinvError, match="model.checkpoint=") as err:
        create_model("resnet50", source="torchvision", weights="IMAGENET1K_V1")
    assert "resnet50-" in str(err.value)
    with pytest.raises(RepinvError, match="Did you mean 'vit_b_32'"):
        create_model("vit_b_23", source="torchvision")
    with pytest.raises(RepinvError, match="IMAGENET1K_V1"):
        create_model("resnet50", source="torchvision", weights="IMAGENET")


PRESET_PARTS = {
    "trained_patch_embed": ("conv_proj.",),
    "trained_pos_embed": ("encoder.pos_embedding",),
    "trained_norm1": ("encoder.layers.encoder_layer_0.ln_1.",),
    "trained_input_untrained_encoders": ("conv_proj.",),
}


@pytest.mark.parametrize("preset", sorted(PRESET_PARTS))
def test_transplant_presets_keep_torchvision_parts_and_reset_the_rest(preset, tmp_path):
    untrained = instantiate(compose_cfg(["model=tv_vit_tiny"], tmp_path).model).net.state_dict()
    gen = torch.Generator().manual_seed(1)
    trained = {k: (v + 0.1 * torch.randn(v.shape, generator=gen)).contiguous() for k, v in untrained.items()}
    save_file(trained, str(tmp_path / "w.safetensors"))
    cfg = compose_cfg(["model=tv_vit_tiny", f"model.checkpoint={tmp_path / 'w.safetensors'}", f"surgery={preset}"], tmp_path)
    model = apply_surgery(build(cfg.model), {k: build(op) for k, op in cfg.surgery.items()})
    kept = [k for k in untrained if k.startswith(PRESET_PARTS[preset])]
    assert kept
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, trained[key] if key in kept else untrained[key]), key


def test_no_layernorm_removes_every_torchvision_layernorm_and_the_run_still_inverts(run_repinv):
    records, out = run_repinv(*TV_TINY, "surgery=no_layernorm", "layers=[1]", "logger=csv")
    header, row0 = ((out / "csv" / "metrics.csv").read_text().splitlines()[i].split(",") for i in (0, 1))
    assert records[0]["psnr"] > float(row0[header.index("psnr/chelsea/L1")]) + 3
    model = Remove("LayerNorm")(instantiate(compose_cfg(["model=tv_vit_tiny"], out).model))
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.net.modules())
    assert "no_layernorm" in (out / "config.yaml").read_text()
