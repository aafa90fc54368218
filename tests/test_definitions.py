"""The study's definitions against values computed by hand on tiny inputs, and its numbers through the composed config.

Each number of the study's recipe (loss scale 0.15, noise-shift std 1/18, init N(0.7, 1/20), blur 3x3 from sigma 2.4
to 0.4, 1,500 steps) and repinv's lr 0.05 (the study gives none) is pinned twice: in the function that uses it and in
the config a run composes.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from conftest import compose_cfg
from repinv.engine.module import noise_canvas
from repinv.engine.pipeline import build, build_each
from repinv.errors import RepinvError
from repinv.inputs.images import TargetImage
from repinv.metrics import psnr, ssim
from repinv.objectives.base import target_seed
from repinv.objectives.layer import LayerInversion, distance
from repinv.params import Fourier, Pyramid
from repinv.params.fourier import COLOR_CORRELATION_SQRT, spectrum_scale
from repinv.priors import GaussianBlur, Jitter


def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch32_224", img_size=64, patch_size=16, depth=3, embed_dim=32, num_heads=2).eval()


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


# -- the layer loss -------------------------------------------------------------------------
OUT, TARGET = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, 5.0]])


def test_l1_distance_is_the_sum_of_absolute_differences():
    assert distance(OUT, TARGET, "l1").item() == pytest.approx(1 + 2 + 2)


def test_sse_is_the_squared_l2_norm_mse_its_mean_and_cosine_is_one_minus_cos():
    assert distance(OUT, TARGET, "sse").item() == pytest.approx(1 + 4 + 4)
    assert distance(OUT, TARGET, "mse").item() == pytest.approx((1 + 4 + 4) / 3)
    assert distance(OUT, TARGET, "cosine").item() == pytest.approx(1 - 15 / (math.sqrt(14) * 5))


def test_sse_steps_the_image_at_l1s_scale_and_mse_far_below_it():
    """The squared L2 norm keeps the study's step size working; the mean divides the gradient by the outputs."""
    net, x = vit(), (torch.randn(1, 3, 64, 64) * 0.05 + 0.7).requires_grad_()
    out, target = net.forward_features(x), net.forward_features(torch.rand(1, 3, 64, 64)).detach()
    norm = {kind: torch.autograd.grad(0.15 * distance(out, target, kind).sum(), x, retain_graph=True)[0].norm()
            for kind in ("l1", "sse", "mse")}
    assert 0.2 < norm["sse"] / norm["l1"] < 5
    assert norm["mse"] == pytest.approx(norm["sse"] / out[0].numel(), rel=1e-4)


def test_unknown_loss_names_the_choices():
    with pytest.raises(RepinvError, match="objective.loss=huber is not a layer loss. Use one of l1, sse, mse, cosine"):
        LayerInversion([0], loss="huber")


def test_layer_loss_is_0_15_times_the_summed_absolute_difference_per_target():
    """Two images at two layers: each target's loss is 0.15·Σ|target − output| of its own layer and image."""
    net, images = vit(), [TargetImage(name=n, pixels=torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)))
                          for i, n in enumerate("ab")]
    objective = LayerInversion([1, "patch_embed"], stack=False)
    objective.setup(net, identity, images, seed=0)
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    loss, stats = objective(net, x)
    with torch.no_grad():
        taps = {"L1": net.blocks[1](net.blocks[0](net._pos_embed(net.patch_embed(x)))), "patch_embed": net.patch_embed(x)}
        targets = {"L1": net.blocks[1](net.blocks[0](net._pos_embed(net.patch_embed(torch.stack([i.pixels for i in images]))))),
                   "patch_embed": net.patch_embed(torch.stack([i.pixels for i in images]))}
    for row, (layer, image) in enumerate([("L1", 0), ("L1", 1), ("patch_embed", 0), ("patch_embed", 1)]):
        diff = targets[layer][image] - taps[layer][row]
        assert loss[row].item() == pytest.approx(0.15 * diff.abs().sum().item(), rel=1e-4), (layer, image)
        assert stats["output_l2"][row].item() == pytest.approx(diff.norm().item(), rel=1e-4), (layer, image)
    assert [(r["layer"], r["image"]) for r in objective.targets] == \
        [("L1", "a"), ("L1", "b"), ("patch_embed", "a"), ("patch_embed", "b")]


# -- the noise-shift baseline ---------------------------------------------------------------
def test_noise_shift_baseline_is_the_output_distance_under_seeded_noise_of_std_1_18():
    """‖O(a) − O(a + 1/18·ε)‖ with ε drawn from the run seed's `noise-shift` stream of the image; O the patch embedding,
    a linear map."""
    net = vit()
    image = TargetImage(name="a", pixels=torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))[0])
    objective = LayerInversion(["patch_embed"])
    assert objective.noise_std == pytest.approx(1 / 18)
    objective.setup(net, identity, [image], seed=3)
    objective.prepare(net)
    eps = torch.randn((1, 3, 64, 64), generator=torch.Generator().manual_seed(target_seed(3, "noise-shift", "a")))
    conv = net.patch_embed.proj
    expected = F.conv2d(eps / 18, conv.weight, stride=conv.stride).norm()  # linear: the bias and the image cancel
    assert objective.noise_shift_l2.item() == pytest.approx(expected.item(), rel=1e-4)
    other = LayerInversion(["patch_embed"])
    other.setup(net, identity, [image], seed=4)
    other.prepare(net)
    assert other.noise_shift_l2.item() != pytest.approx(expected.item(), rel=1e-4), "the draw depends on the seed"


def test_an_images_noise_shift_baseline_does_not_depend_on_the_other_images_of_the_run():
    """The accuracy bar of one photograph is the same alone and beside another (a verdict must not change with it)."""
    net = vit()
    gen = torch.Generator().manual_seed(1)
    a, b = (TargetImage(name=n, pixels=torch.rand(3, 64, 64, generator=gen)) for n in "ab")
    bars = []
    for images in ([a], [b, a]):
        objective = LayerInversion(["patch_embed"])
        objective.setup(net, identity, images, seed=3)
        objective.prepare(net)
        bars.append(objective.noise_shift_l2[images.index(a)].item())
    assert bars[0] == pytest.approx(bars[1], rel=1e-6)


def test_accurate_means_output_distance_below_the_noise_shift_baseline():
    net, image = vit(), TargetImage(name="a", pixels=torch.rand(3, 64, 64))
    objective = LayerInversion(["patch_embed"])
    objective.setup(net, identity, [image], seed=0)
    _, exact = objective(net, image.pixels[None])
    _, far = objective(net, image.pixels[None] + 0.5)
    assert exact["accurate"].tolist() == [1.0] and far["accurate"].tolist() == [0.0]


# -- the blur -------------------------------------------------------------------------------
def test_blur_weights_are_the_normalised_3_tap_gaussian():
    e = math.exp(-1 / 2)  # sigma 1: the outer taps weigh exp(-1/2) against the centre's 1
    assert GaussianBlur().weights(1.0) == pytest.approx([e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)])
    e = math.exp(-1 / (2 * 0.4**2))
    assert GaussianBlur().weights(0.4) == pytest.approx([e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)])


def test_blur_schedule_goes_linearly_from_2_4_to_0_4():
    blur = GaussianBlur()
    assert (blur.kernel_size, blur.every) == (3, 1)
    assert blur.sigma(0, 1500) == pytest.approx(2.4)
    assert blur.sigma(1499, 1500) == pytest.approx(0.4)
    assert blur.sigma(750, 1501) == pytest.approx(1.4)
    assert blur.scalars(0, 1500) == {"blur_sigma": pytest.approx(2.4)}


@pytest.mark.parametrize("step,sigma", [(0, 2.4), (99, 0.4)])
def test_blur_update_spreads_an_impulse_into_the_outer_product_of_the_steps_taps(step, sigma):
    img = torch.zeros(1, 3, 7, 7)
    img[:, :, 3, 3] = 1.0
    GaussianBlur().update(img, step, 100)
    e = math.exp(-1 / (2 * sigma**2))
    taps = torch.tensor([e, 1, e]) / (1 + 2 * e)
    expected = torch.zeros(7, 7)
    expected[2:5, 2:5] = torch.outer(taps, taps)
    assert torch.allclose(img[0, 1], expected, atol=1e-6)


def test_study_config_fixes_the_blur_loss_noise_init_steps_and_lr(tmp_path):
    """experiment=study composes 1,500 steps, SGD at lr 0.05 decaying linearly, the 3x3 blur 2.4 -> 0.4, the l1
    loss scaled by 0.15, the 1/18 noise shift and the N(0.7, 1/20) start; and what they build holds those numbers."""
    cfg = compose_cfg(["experiment=study"], tmp_path)
    assert cfg.steps == 1500 and cfg.init.mean == 0.7 and cfg.init.std == pytest.approx(1 / 20)
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.05
    assert cfg.scheduler.total_iters == 1500 and (cfg.scheduler.start_factor, cfg.scheduler.end_factor) == (1.0, 0.05)
    priors = build_each(cfg, "priors")
    assert list(priors) == ["blur", "jitter"] and priors["jitter"].pixels == 0, "the study blurs and does not jitter"
    blur = priors["blur"]
    assert blur.kernel_size == 3 and blur.every == 1
    assert blur.sigma(0, cfg.steps) == pytest.approx(2.4) and blur.sigma(cfg.steps - 1, cfg.steps) == pytest.approx(0.4)
    objective = build(cfg.objective)
    assert isinstance(objective, LayerInversion) and objective.loss == "l1"
    assert objective.scale == 0.15 and objective.noise_std == pytest.approx(1 / 18, rel=1e-12)
    opt = build(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    assert opt.param_groups[0]["lr"] == 0.05


def test_default_run_is_300_steps_of_the_same_recipe(tmp_path):
    cfg = compose_cfg([], tmp_path)
    assert cfg.steps == 300 and cfg.optimizer.lr == 0.05 and cfg.objective.scale == 0.15
    assert build(cfg.priors.blur).sigma(299, 300) == pytest.approx(0.4)


# -- the jitter -----------------------------------------------------------------------------
def test_jitter_offsets_cover_0_to_pixels_inclusive_after_start():
    jitter, gen = Jitter(pixels=4, start=10), torch.Generator().manual_seed(0)
    assert jitter.margin == 4 and jitter.offset(9, gen) == (2, 2), "before start: the centre crop"
    drawn = [jitter.offset(10, gen) for _ in range(400)]
    assert {dy for dy, _ in drawn} == {dx for _, dx in drawn} == {0, 1, 2, 3, 4}
    assert Jitter().offset(50, gen) == (0, 0)


def test_blur_jitter_preset_jitters_16_pixels_from_step_200(tmp_path):
    priors = build_each(compose_cfg(["regularizer=blur_jitter"], tmp_path), "priors")
    assert list(priors) == ["blur", "jitter"] and (priors["jitter"].pixels, priors["jitter"].start) == (16, 200)


# -- the start ------------------------------------------------------------------------------
def test_init_is_seeded_normal_noise_with_mean_0_7_and_std_1_20():
    canvas = noise_canvas([5, 6], (224, 224), 0.7, 1 / 20)
    assert canvas.shape == (2, 3, 224, 224)
    assert torch.equal(canvas[0], torch.randn((3, 224, 224), generator=torch.Generator().manual_seed(5)) * (1 / 20) + 0.7)
    assert canvas.mean().item() == pytest.approx(0.7, abs=1e-3) and canvas.std().item() == pytest.approx(0.05, abs=1e-3)


def test_a_run_starts_from_the_configured_noise(run_repinv, monkeypatch):
    """The canvas the first step sees is N(0.7, 1/20) per pixel, as config.yaml's `init` says."""
    from repinv.engine import module as module_lib

    seen, original = {}, module_lib.ImageOptimization.on_fit_start

    def spy(self):
        seen["start"] = self.canvas.image.detach().clone()
        original(self)

    monkeypatch.setattr(module_lib.ImageOptimization, "on_fit_start", spy)
    run_repinv("steps=1", "logger=none", "layers=[0]", "image=[chelsea,astronaut]")
    start = seen["start"]
    assert start.shape == (2, 3, 64, 64)
    assert start.mean().item() == pytest.approx(0.7, abs=2e-3) and start.std().item() == pytest.approx(0.05, abs=2e-3)


def test_a_layer_named_by_index_or_by_module_path_gives_the_same_run(run_repinv):
    """`layers=1` and `layers=blocks.1` are one target: the same start, the same steps, the same numbers."""
    runs = [run_repinv("steps=3", "log_every=1", "logger=none", f"layers={spec}", name=spec) for spec in ("1", "blocks.1")]
    (by_index, _), (by_path, _) = runs
    assert [r["layer"] for r in by_index] == ["L1"] and [r["layer"] for r in by_path] == ["blocks.1"]
    label = ("layer", "column", "png", "seconds_per_step")
    assert [{k: v for k, v in r.items() if k not in label} for r in by_index] == \
        [{k: v for k, v in r.items() if k not in label} for r in by_path]


# -- PSNR and SSIM --------------------------------------------------------------------------
def test_psnr_is_10_log10_of_one_over_mse_of_the_clamped_image():
    reference = torch.full((2, 3, 8, 8), 0.5)
    image = reference + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    assert psnr(image, reference).tolist() == pytest.approx([20.0, 40.0], abs=1e-4)
    above = torch.full((1, 3, 8, 8), 1.5)  # clamped to 1: MSE 0.25
    assert psnr(above, reference[:1]).item() == pytest.approx(10 * math.log10(1 / 0.25), abs=1e-4)


def test_ssim_of_flat_images_is_the_luminance_term_and_matches_torchmetrics():
    """Flat images have no variance: SSIM = (2ab + C1) / (a² + b² + C1), C1 = (0.01 · data range)²."""
    a, b, c1 = 0.3, 0.6, 0.01**2
    flat = lambda v: torch.full((1, 3, 32, 32), v)  # noqa: E731
    assert ssim(flat(a), flat(b)).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-3)  # float32
    gen = torch.Generator().manual_seed(0)
    image, reference = torch.rand(3, 3, 32, 32, generator=gen), torch.rand(3, 3, 32, 32, generator=gen)
    expected = structural_similarity_index_measure(image, reference, data_range=1.0, reduction="none")
    assert torch.allclose(ssim(image, reference), expected, atol=1e-6)
    assert ssim(reference, reference).tolist() == pytest.approx([1.0] * 3, abs=1e-5)


# -- the Fourier parametrisation ------------------------------------------------------------
def test_fourier_scale_is_one_over_frequency_with_unit_mean_square():
    scale = spectrum_scale(8, 8, 1.0)
    assert scale.shape == (8, 5)
    assert scale.square().mean().item() == pytest.approx(1.0, rel=1e-5)
    # frequencies in cycles per pixel: (fy, fx) = (0, 1/8), (0, 4/8), (4/8, 4/8), and DC floored at 1/8
    assert scale[0, 4].item() / scale[0, 1].item() == pytest.approx((1 / 8) / (4 / 8), rel=1e-5)
    assert scale[4, 4].item() / scale[0, 1].item() == pytest.approx((1 / 8) / math.sqrt(0.5), rel=1e-5)
    assert scale[0, 0].item() == pytest.approx(scale[0, 1].item(), rel=1e-6)
    assert torch.allclose(spectrum_scale(8, 8, 0.0), torch.ones(8, 5)), "decay 0 weighs every frequency equally"


def test_fourier_colour_basis_is_the_imagenet_correlation_sqrt_scaled_to_unit_largest_column():
    column = math.sqrt(0.26**2 + 0.27**2 + 0.27**2)  # the largest column's norm
    fourier = Fourier((1, 3, 8, 8))
    assert torch.allclose(fourier.color, COLOR_CORRELATION_SQRT / column, atol=1e-6)
    assert COLOR_CORRELATION_SQRT[:, 0].tolist() == pytest.approx([0.26, 0.27, 0.27])


def test_fourier_renders_a_dc_coefficient_as_a_flat_image_in_its_colour():
    """Decorrelated channel 1's DC coefficient v renders as colour column 1 × v·scale(DC)/√(HW) everywhere."""
    fourier, v = Fourier((1, 3, 8, 8)), 2.0
    with torch.no_grad():
        fourier.param[0, 1, 0, 0, 0] = v
    image = fourier.render()
    colour = COLOR_CORRELATION_SQRT[:, 1] / math.sqrt(0.26**2 + 0.27**2 + 0.27**2)
    level = v * spectrum_scale(8, 8, 1.0)[0, 0].item() / 8
    assert torch.allclose(image[0], (colour * level).view(3, 1, 1).expand(3, 8, 8), atol=1e-6)
    flat = torch.ones(1, 3, 8, 8) * torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    coeffs = fourier.encode(flat)
    dc = torch.linalg.solve(fourier.color.double(), torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)) * 8
    assert torch.allclose(coeffs[0, :, 0, 0, 0].double() * spectrum_scale(8, 8, 1.0)[0, 0].double(), dc, atol=1e-5)


# -- the pyramid ----------------------------------------------------------------------------
def test_pyramid_levels_halve_the_size_rounding_up_and_sum_with_the_gain():
    assert Pyramid((1, 3, 8, 8), levels=3).sizes == [(8, 8), (4, 4), (2, 2)]
    assert Pyramid((1, 3, 7, 5), levels=3).sizes == [(7, 5), (4, 3), (2, 2)]
    pyramid = Pyramid((1, 1, 8, 8), levels=3, gain=0.5)
    with torch.no_grad():
        pyramid.param[0, 0, 64 + 16 :] = 4.0  # the coarsest level, flat
    assert torch.allclose(pyramid.render(), torch.full((1, 1, 8, 8), 4.0 * 0.5**2))
    flat = Pyramid((1, 1, 8, 8), levels=3, gain=0.5).encode(torch.full((1, 1, 8, 8), 0.3))
    assert torch.allclose(flat[0, 0, : 64 + 16], torch.zeros(80), atol=1e-7), "a flat image lives in the coarsest level"
    assert torch.allclose(flat[0, 0, 80:], torch.full((4,), 0.3 / 0.5**2))


def test_class_generation_descends_on_each_class_logits_distance_from_the_constant_with_blur_and_jitter(tmp_path):
    """The study's class generation: |C - logit_i| per image, with the 3x3 blur and jitter from about step 200."""

    class Logits(torch.nn.Module):
        num_classes = 4

        def forward(self, x):
            return 10 * x.flatten(1)[:, :4]

    cfg = compose_cfg(["objective=class", "classes=[1,3]"], tmp_path)
    objective = build(cfg.objective)
    objective.setup(Logits(), identity, [], seed=0)
    x = torch.rand(2, 3, 4, 4)
    losses, stats = objective(Logits(), x)
    logit = Logits()(x)[[0, 1], [1, 3]]
    assert objective.constant == 100.0 and torch.allclose(losses, (100.0 - logit).abs())
    priors = build_each(cfg, "priors")
    assert priors["blur"].kernel_size == 3 and priors["blur"].every == 1
    assert priors["blur"].sigma(0, 1500) == pytest.approx(2.4) and priors["blur"].sigma(1499, 1500) == pytest.approx(0.4)
    assert priors["jitter"].start == 200 and priors["jitter"].pixels > 0


@pytest.mark.parametrize("source,model,entry", [("timm", "vit_base_patch32_224", "patch_embed"),
                                                ("torchvision", "vit_b_32", "conv_proj")])
def test_the_study_budget_inverts_vit_b_32_at_224_through_its_12_encoders_and_the_last_at_105000_steps(
        tmp_path, source, model, entry):
    """ViT-B/32 on 3x224x224 inputs, "the twelth and final encoder" at n=1,500 steps; the long panel's last encoder at
    n=105,000, as the ledger plans them (its own steps after the budget's), for each model source."""
    from repinv.claims.ledger import BUDGETS, plan
    from repinv.claims.registry import CLAIMS

    suffix = "" if source == "timm" else "-tv"
    claims = [c for c in CLAIMS if c.id in {f"vit-untrained-constant-depth{suffix}", f"trained-input-105k{suffix}"}]
    p = plan(claims, BUDGETS["study"], tmp_path, 1, ["chelsea"], None, lambda source, overrides: [], [])
    depth = p.conditions[(claims[0].id, "default (linear lr)")]
    long = p.conditions[(claims[1].id, "default (linear lr)")]
    for runs, layers, steps in ((depth["vit"], [entry, *range(12)], 1500), (long["long"], [11], 105000),
                                (long["transplant"], [entry, *range(12)], 1500)):
        cfg = compose_cfg(list(runs[0][1].overrides), tmp_path)
        assert (cfg.model.name, cfg.model.input_size, cfg.steps, list(cfg.layers)) == (model, 224, steps, layers)


def test_the_study_budget_runs_vit_l_16_at_512_in_patches_of_16(tmp_path):
    """"This model accepts inputs of size 512x512 ... and makes patches of that input of size 16x16"."""
    from repinv.claims.registry import ARCHS

    for source in ("timm", "torchvision"):
        model = compose_cfg(ARCHS[("vit_l_16", source)]["study"], tmp_path).model
        assert model.input_size == 512 and "16" in model.name, source
