"""torchvision as a model source: the study's own models, through the same taps and runs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from repinv.errors import RepinvError
from repinv.images import load_images
from repinv.models import create_model
from repinv.taps import resolve_layers

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
    loaded = create_model("vit_b_32", source="torchvision", input_size=64, seed=0, checkpoint=str(path), kwargs={"image_size": 64})
    assert loaded.trained
    for k, v in loaded.net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_weights_trained_at_another_size_get_resampled_position_embeddings(tmp_path):
    donor = create_model("vit_b_32", source="torchvision", input_size=64, kwargs={"image_size": 64})
    torch.save(donor.net.state_dict(), tmp_path / "w.pth")
    big = create_model("vit_b_32", source="torchvision", input_size=96, checkpoint=str(tmp_path / "w.pth"), kwargs={"image_size": 96})
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
