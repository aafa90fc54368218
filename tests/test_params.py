"""Image parametrisations render what they encode and invert a small problem; priors and random views behave."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_cfg
from repinv.errors import RepinvError
from repinv.params import Fourier, Pixel, Pyramid
from repinv.priors import AlphaNorm, L2Decay, ScaleRotate, TotalVariation

CLASSES = {"fourier": Fourier, "pixel": Pixel, "pyramid": Pyramid}  # each config of conf/param and the class it names
NAMES = sorted(CLASSES)


def noise(shape, seed=0):
    """The runs' starting image: N(0.7, 1/20) per pixel."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.05 + 0.7


def psnr(image, target):
    return (-10 * torch.log10((image - target).square().mean())).item()


def waves(n=2, size=64):
    """A smooth colour target of `n` images."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    image = torch.stack([0.5 + 0.3 * torch.sin(6 * xx + c) * torch.cos(4 * yy - c) for c in range(3)])
    return torch.stack([image, image.flip(-1)])[:n]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 3, 48, 64)], ids=["64x64", "48x64"])
def test_round_trip_pixel_param_pixel(name, shape):
    image = noise(shape)
    p = CLASSES[name](shape)
    p.set_image(image)
    rendered = p.render()
    assert rendered.shape == shape
    assert (rendered - image).abs().max().item() < 1e-5
    assert p.param.shape[0] == shape[0], "the parameter's first dimension is the image batch"


@pytest.mark.parametrize("name", NAMES)
def test_set_image_keeps_the_parameter_and_render_is_differentiable(name):
    p = CLASSES[name]((1, 3, 32, 32))
    param = p.param
    p.set_image(waves(1, 32))
    assert p.param is param, "the optimiser must keep stepping the same tensor"
    p.render().sum().backward()
    assert p.param.grad is not None and p.param.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_inversion_through_each_parametrisation_improves_psnr(name):
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect").requires_grad_(False)
    target = waves()
    goal = layer(target)
    p = CLASSES[name](target.shape)
    p.set_image(noise(target.shape))
    start = psnr(p.render().detach(), target)
    opt = torch.optim.Adam(p.parameters(), lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        (layer(p.render()) - goal).square().mean().backward()
        opt.step()
    assert start < 14
    assert psnr(p.render().detach(), target) > start + 10


def test_lbfgs_config_steps_with_a_closure(tmp_path):
    cfg = compose_cfg(["optimizer=lbfgs"], tmp_path)
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect").requires_grad_(False)
    target = waves()
    goal = layer(target)
    p = Pixel.from_image(noise(target.shape))
    opt = instantiate(cfg.optimizer)(p.parameters())

    def closure():
        opt.zero_grad()
        loss = (layer(p.render()) - goal).square().mean()
        loss.backward()
        return loss

    start = closure().item()
    for _ in range(10):
        opt.step(closure)
    assert closure().item() < start / 1000
    assert psnr(p.render().detach(), target) > 40


def test_bad_parametrisation_input_is_one_paragraph():
    with pytest.raises(RepinvError, match="RGB"):
        Fourier((1, 1, 8, 8))
    with pytest.raises(RepinvError, match="at most 4 levels"):
        Pyramid((1, 3, 8, 12), levels=5)
    with pytest.raises(RepinvError, match="shape"):
        Pixel((1, 3, 8, 8)).set_image(torch.zeros(1, 3, 8, 9))


def test_penalty_values():
    edge = torch.zeros(1, 1, 4, 4)
    edge[..., 2:] = 1
    assert TotalVariation(weight=1, beta=2)(edge).tolist() == [3.0]
    assert TotalVariation(weight=2, beta=1)(edge).tolist() == [6.0]
    grey = torch.full((2, 3, 4, 4), 0.6)
    assert AlphaNorm(weight=1, alpha=3)(grey) == pytest.approx([48 * 0.1**3] * 2)
    assert L2Decay(weight=1)(grey) == pytest.approx([48 * 0.01] * 2)


@pytest.mark.parametrize("penalty", [TotalVariation(1e-2, 2), TotalVariation(1e-2, 1), AlphaNorm(1e-2, 6), L2Decay(1e-2)])
def test_each_penalty_falls_when_optimised_alone(penalty):
    image = torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    start = penalty(image).detach()
    opt = torch.optim.Adam([image], lr=0.01)
    for step in range(30):
        opt.zero_grad()
        penalty.penalty(image, step).sum().backward()
        opt.step()
    assert (penalty(image) < 0.8 * start).all(), "each image's own penalty falls"


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 3, 48, 64)], ids=["64x64", "48x64"])
def test_scale_rotate_identity_and_seeded(shape):
    image = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    identity = ScaleRotate(scale=(1, 1), degrees=0)
    assert (identity(image, torch.Generator().manual_seed(0)) - image).abs().max().item() < 1e-6
    jitter = ScaleRotate(scale=(0.8, 1.2), degrees=15)
    a = jitter(image, torch.Generator().manual_seed(3))
    b = jitter(image, torch.Generator().manual_seed(3))
    c = jitter(image, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.01 and (a - image).abs().max() > 0.01


def test_scale_rotate_draws_a_process_the_rows_one_process_would():
    """With targets split over processes each process sees its rows of one process's draws, whatever its share."""
    image = torch.rand((5, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    whole = ScaleRotate(scale=(0.8, 1.2), degrees=15)(image, torch.Generator().manual_seed(3))
    for start, stop in [(0, 3), (3, 5)]:
        share = ScaleRotate(scale=(0.8, 1.2), degrees=15)
        share.take_rows(start, stop, 5)
        assert torch.equal(share(image[start:stop], torch.Generator().manual_seed(3)), whole[start:stop])


def test_scale_rotate_rotates_in_pixel_units():
    both = torch.tensor([1.0, 1.0], dtype=torch.float64)
    wide = noise((2, 3, 48, 64))
    half_turn = ScaleRotate().apply(wide, both, 180 * both)
    assert (half_turn - wide.flip(-1, -2)).abs().max().item() < 1e-5
    square = noise((2, 3, 32, 32))
    quarter_turn = ScaleRotate().apply(square, both, 90 * both)
    assert (quarter_turn - torch.rot90(square, 1, (-2, -1))).abs().max().item() < 1e-5
    blob = torch.zeros(1, 1, 48, 64)
    blob[..., 22:26, 42:46] = 1  # centred 12 pixels right of the image centre (23.5, 31.5)
    turned = ScaleRotate().apply(blob, both[:1], 90 * both[:1])[0, 0]
    rows, cols = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    centroid = [(turned * rows).sum() / turned.sum(), (turned * cols).sum() / turned.sum()]
    assert centroid == [pytest.approx(11.5, abs=0.3), pytest.approx(31.5, abs=0.3)], "12 pixels above the centre"
    image = wide.clone().requires_grad_(True)
    ScaleRotate((0.9, 1.1), 10)(image, torch.Generator().manual_seed(0)).sum().backward()
    assert image.grad.abs().sum() > 0


@pytest.mark.parametrize("name", [*NAMES, "default"])
def test_param_configs_build_a_factory_of_the_batch_shape(name, tmp_path):
    cfg = compose_cfg([f"param={name}"], tmp_path)
    p = instantiate(cfg.param)((2, 3, 48, 64))
    assert type(p) is CLASSES.get(name, Pixel)
    assert p.render().shape == (2, 3, 48, 64)


@pytest.mark.parametrize("name,kinds", [
    ("tv", ["GaussianBlur", "Jitter", "TotalVariation"]),
    ("penalties", ["TotalVariation", "AlphaNorm"]),
    ("transforms", ["GaussianBlur", "Jitter", "ScaleRotate"]),
])
def test_prior_presets_build_their_priors_in_order(name, kinds, tmp_path):
    from repinv.engine.pipeline import build_each

    cfg = compose_cfg([f"priors={name}"], tmp_path)
    assert [type(p).__name__ for p in build_each(cfg, "priors").values()] == kinds


def test_scale_rotate_is_the_step_transform():
    image = noise((2, 3, 32, 32))
    prior = ScaleRotate((0.8, 1.2), 15)
    seeded = torch.Generator().manual_seed
    assert torch.equal(prior.transform(image, 0, seeded(5)), prior(image, seeded(5)))
    assert prior.penalty(image, 0) is None and prior.margin == 0


def _tiny_run(tmp_path, name, *overrides):
    from conftest import TINY
    from repinv.engine.pipeline import run

    return run(compose_cfg([*TINY, "steps=20", "logger=csv", "log_every=5", *overrides], tmp_path / name))


@pytest.mark.parametrize(
    "name,prior,weight,measure",
    [
        ("tv", "repinv.priors.TotalVariation", 0.05, lambda x: TotalVariation(1, 2)(x)),
        ("alpha", "repinv.priors.AlphaNorm", 20, lambda x: AlphaNorm(1, 6)(x)),
        ("l2", "repinv.priors.L2Decay", 0.05, lambda x: L2Decay(1)(x)),
    ],
)
def test_each_prior_lowers_its_penalty_through_the_module(tmp_path, name, prior, weight, measure):
    """A heavily weighted penalty prior, given by `_target_` alone, pulls the run's final images towards it."""
    plain = _tiny_run(tmp_path, "plain", "priors=none").images
    weighted = _tiny_run(
        tmp_path, name, "priors=none", f"+priors.{name}._target_={prior}", f"+priors.{name}.weight={weight}"
    ).images
    assert (measure(weighted) < 0.7 * measure(plain)).all()


@pytest.mark.parametrize("param", ["pixel", "fourier", "pyramid"])
def test_runs_step_each_parametrisation(tmp_path, param):
    """The checkpoint holds the parametrisation's tensor; the run's images are what it renders."""
    result = _tiny_run(tmp_path, param, f"param={param}", "optimizer=adam", "optimizer.lr=0.02", "priors=tv")
    state = torch.load(result.out_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    p = instantiate(compose_cfg([f"param={param}"], tmp_path / "cfg").param)((2, 3, 64, 64))
    p.param.data.copy_(state["image_param.param"])
    assert (p.render().detach().clamp(0, 1) - result.images).abs().max() < 1e-5
    assert all(r["psnr"] > 10 and r["steps"] == 20 for r in result.records)


def test_lbfgs_run_evaluates_several_times_per_step_and_logs_once(tmp_path):
    import csv

    result = _tiny_run(tmp_path, "lbfgs", "optimizer=lbfgs", "priors=none", "objective.loss=mse")
    with open(result.out_dir / "csv" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("loss")]
    assert steps == [0, 5, 10, 15, 20]
    start = _tiny_run(tmp_path, "one", "optimizer=lbfgs", "priors=none", "objective.loss=mse", "steps=1").records
    assert all(r["output_l2"] < 0.5 * s["output_l2"] for r, s in zip(result.records, start))


@pytest.mark.parametrize("name", NAMES)
def test_take_rows_keeps_a_shard_of_the_batch(name):
    image = noise((3, 3, 32, 32))
    p = CLASSES[name](image.shape)
    p.set_image(image)
    p.take_rows(1, 3)
    assert p.shape == (2, 3, 32, 32) and p.param.shape[0] == 2
    assert (p.render().detach() - image[1:3]).abs().max() < 1e-5
    p.set_image(image[:2])
    assert (p.render().detach() - image[:2]).abs().max() < 1e-5


def test_default_penalty_weights_put_each_gradient_near_a_tenth_of_the_data_terms(tmp_path):
    """From the starting noise at an untrained ViT-B/32's block 5 (what the defaults follow): a prior that shapes
    the image without replacing the objective, not one four orders of magnitude below it."""
    from conftest import compose_cfg
    from repinv.engine.module import noise_canvas
    from repinv.engine.pipeline import build_each
    from repinv.inputs.images import load_images
    from repinv.models import create_model

    torch.manual_seed(0)
    model = create_model("vit_base_patch32_224")
    mean, std = (torch.tensor(v)[:, None, None] for v in (model.mean, model.std))
    net = model.net.requires_grad_(False)
    block5 = lambda x: net.forward_intermediates((x - mean) / std, indices=[5], intermediates_only=True)[0]  # noqa: E731
    target = block5(load_images("chelsea", 224)[0].pixels[None])
    start = noise_canvas([0], (224, 224), 0.7, 0.05).requires_grad_(True)
    data = torch.autograd.grad(0.15 * (block5(start) - target).abs().sum(), start)[0].norm()
    priors = {**build_each(compose_cfg(["priors=penalties"], tmp_path), "priors"), "l2": L2Decay()}
    for name, prior in priors.items():
        ratio = torch.autograd.grad(prior.penalty(start, 0).sum(), start)[0].norm() / data
        assert 1 / 30 < ratio < 1 / 3, f"{name}: gradient {ratio:.2g} of the data term's"
