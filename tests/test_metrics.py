"""Pixel metrics: one value per image, the values torchmetrics gives."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from conftest import REPO, spelled
from repinv.metrics import COMPARED, HEADLINE, INPUT_L2, PSNR, SSIM, input_l2, psnr, ssim


def test_pixel_metrics_are_torchmetrics_values_per_image():
    torch.manual_seed(0)
    ref = torch.rand(3, 3, 40, 48)
    noise = torch.tensor([0.02, 0.1, 0.3]).view(3, 1, 1, 1)
    image = ref + noise * torch.randn_like(ref)  # leaves [0, 1]: PSNR and SSIM see it clamped
    m = {f.__name__: f(image, ref) for f in (input_l2, psnr, ssim)}
    clamped = image.clamp(0, 1)
    for i in range(3):
        assert torch.allclose(m["ssim"][i], structural_similarity_index_measure(clamped[i:i + 1], ref[i:i + 1], data_range=1.0),
                              atol=1e-6)
        assert torch.allclose(m["psnr"][i], peak_signal_noise_ratio(clamped[i:i + 1], ref[i:i + 1], data_range=1.0), atol=1e-5)
        assert torch.allclose(m["input_l2"][i], (image[i] - ref[i]).norm())
    assert m["ssim"][0] > m["ssim"][1] > m["ssim"][2] and m["psnr"][0] > m["psnr"][1] > m["psnr"][2]


def test_metric_fields_are_read_by_their_one_name_in_repinv_metrics():
    """Summaries, claims, diagnostics and scripts read a metric's record field through repinv.metrics (PSNR, HEADLINE,
    COMPARED, ...), never by spelling it, so renaming a metric there renames it for every reader."""
    fields = set(OmegaConf.load(REPO / "src" / "repinv" / "conf" / "metrics" / "default.yaml"))
    assert {INPUT_L2, PSNR, SSIM} == fields and HEADLINE in fields and set(COMPARED) <= fields
    own = REPO / "src" / "repinv" / "metrics"
    readers = [p for p in [*(REPO / "src" / "repinv").rglob("*.py"), *(REPO / "scripts").glob("*.py")] if own not in p.parents]
    assert [hit for p in readers for hit in spelled(p, fields)] == []


def test_a_layer_caption_falls_back_on_the_first_metric_the_run_names():
    """Without the headline metric the caption is the first of the run's metrics the record holds, as the run names them
    to `finalize`; without any, the objective's score metric."""
    from repinv.objectives import LayerInversion

    record = {"image": "x", "layer": "L0", "loss": 1.0, "output_l2": 2.0, "accurate": 0.0, SSIM: 0.5, INPUT_L2: 3.0}
    objective = LayerInversion([0])
    assert objective.finalize(record, metrics=(PSNR, SSIM, INPUT_L2))["caption"] == "SSIM 0.500"
    assert objective.finalize(record, metrics=(INPUT_L2, SSIM))["caption"] == "input_l2 3"
    assert objective.finalize(record)["caption"] == "output_l2 2"
