"""A run works on any device and never waits for it between log steps, shown without a GPU.

Placement: a module moved to the `meta` device (a device with shapes but no data) takes a step
while every aten op is watched; an op that reads a tensor the module still holds on the CPU, or
mixes CPU and meta tensors, is a tensor left behind (on a GPU: a crash or a copy every step).
Synchronisation: the host-reading tensor methods (`.item()`, `.tolist()`, `bool()`, `.cpu()`,
`.numpy()`) are counted over a short and a longer run that log only at the end; a step that
reads the device back would make the longer run count more.
"""

from __future__ import annotations

import collections
import contextlib
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from repinv.engine.module import ImageOptimization
from repinv.errors import RepinvError
from repinv.inputs.images import TargetImage
from repinv.models import create_model
from repinv.objectives import ClassGeneration, LayerInversion
from repinv.objectives.feature import FeatureVisualization
from repinv.params import Fourier, Pixel, Pyramid
from repinv.priors import AlphaNorm, GaussianBlur, Jitter, Octaves, ScaleRotate, TotalVariation

TINY = dict(img_size=64, patch_size=16, depth=2, embed_dim=64, num_heads=2)


def tiny_model():
    return create_model("vit_base_patch32_224", label="vit_tiny", input_size=64, kwargs=TINY)


def photos(n: int = 2) -> list[TargetImage]:
    gen = torch.Generator().manual_seed(1)
    return [TargetImage(name=f"p{i}", pixels=torch.rand((3, 64, 64), generator=gen)) for i in range(n)]


def module(objective=None, param=Pixel, priors=(), model=None, **kwargs) -> ImageOptimization:
    objective = objective or LayerInversion([0, 1, "patch_embed"])
    return ImageOptimization(model=model or tiny_model(), objective=objective, images=photos(),
                             optimizer=partial(torch.optim.SGD, lr=0.1), steps=20, priors=list(priors), param=param,
                             log_every=1000, **kwargs)


def held_tensors(root) -> list[torch.Tensor]:
    """Every tensor the module holds: its parameters, buffers and plain tensor attributes of it, its
    submodules and its priors (also inside lists, tuples and dicts)."""
    found, seen = [], set()

    def visit(value, depth):
        if depth > 4 or id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v, depth + 1)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v, depth + 1)
        elif isinstance(value, torch.nn.Module) or hasattr(value, "__dict__") and type(value).__module__.startswith("repinv"):
            for v in vars(value).values():
                visit(v, depth + 1)

    visit(root, 0)
    return found


class LeftBehind(TorchDispatchMode):
    """Records aten ops that read a CPU tensor the module holds, or mix CPU and other-device tensors
    (one-element CPU tensors, which ops take as numbers, aside)."""

    def __init__(self, held: list[torch.Tensor]):
        super().__init__()
        self.held = {t.untyped_storage().data_ptr() for t in held if t.device.type == "cpu" and t.numel()}
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
        cpu = [t for t in tensors if t.device.type == "cpu" and t.numel() > 1 and t.layout == torch.strided]
        mixed = cpu and any(t.device.type != "cpu" for t in tensors)
        if mixed or any(t.untyped_storage().data_ptr() in self.held for t in cpu):
            self.ops.append(f"{func} on {[(tuple(t.shape), str(t.device)) for t in tensors]}")
        return func(*args, **(kwargs or {}))


def step_on(m: ImageOptimization, device: str, step: int = 1, precision: str = "32-true", lr: float = 0.1) -> list[str]:
    """Move `m` to `device`, start it as a fit does and take one non-log step (under bf16 inside autocast, as Lightning
    runs it); the ops that used left-behind tensors."""
    m.to(device)
    m._trainer = SimpleNamespace(precision=precision, global_step=step)
    opt = torch.optim.SGD(m.image_param.parameters(), lr=lr)
    m.optimizers, m.lr_schedulers, m.manual_backward = (lambda: opt), (lambda: None), (lambda loss: loss.backward())
    m.on_fit_start()
    mixed = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
    with LeftBehind(held_tensors(m)) as watch, mixed:
        m.training_step(None, step)
    assert m.image_param.param.device.type == device
    return watch.ops


OBJECTIVES = {
    "layer shared pass": lambda: LayerInversion([0, 1, "patch_embed"], stack=True),
    "layer one pass each": lambda: LayerInversion([0, 1], stack=False),
    "class": lambda: ClassGeneration([1, 3], samples=1),
    "feature": lambda: FeatureVisualization(layer=1, units=[0, [1, 2]]),
}
PARAMS = {"pixel": Pixel, "fourier": Fourier, "pyramid": partial(Pyramid, levels=3)}
PRIORS = {
    "blur": [GaussianBlur()],
    "jitter": [GaussianBlur(), Jitter(pixels=4)],
    "octaves": [Octaves((0.5, 1.0))],
    "penalties": [TotalVariation(1e-4), AlphaNorm(1e-4)],
    "scale_rotate": [Jitter(pixels=4), ScaleRotate()],
}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_each_objective_steps_on_another_device(objective):
    assert step_on(module(OBJECTIVES[objective]()), "meta") == []


@pytest.mark.parametrize("param", PARAMS)
def test_each_parametrisation_steps_on_another_device(param):
    assert step_on(module(param=PARAMS[param], priors=[GaussianBlur()]), "meta") == []


@pytest.mark.parametrize("priors", PRIORS)
def test_each_prior_steps_on_another_device(priors):
    assert step_on(module(priors=PRIORS[priors]), "meta") == []


@pytest.mark.parametrize("param", PARAMS)
def test_a_bf16_step_keeps_the_image_its_parametrisation_and_priors_in_fp32(param):
    """Only the network's forward runs in bf16. With a zero rate a step changes the image through its priors alone
    (blur, then the write-back to the parameter): a bf16 step must leave the image an fp32 step does."""
    images = {}
    for precision in ("32-true", "bf16-mixed"):
        m = module(param=PARAMS[param], priors=[GaussianBlur()])
        step_on(m, "cpu", precision=precision, lr=0.0)
        images[precision] = m.canvas.image
    assert images["bf16-mixed"].dtype == torch.float32
    assert torch.equal(images["bf16-mixed"], images["32-true"])


def test_a_module_built_around_a_network_already_on_its_device_steps_there():
    """What scripts/benchmark.py does: the network moves first, then the module is built around it."""
    model = tiny_model()
    model.net.to("meta")
    m = module(LayerInversion([0, 1], stack=False), model=model, priors=[GaussianBlur()])
    assert m.normalize.mean.device.type == "meta"
    assert step_on(m, "meta") == []


def test_a_resumed_run_with_a_diverged_target_steps_on_another_device():
    """The divergence state (which targets stopped, their last finite image) comes back from the
    checkpoint before the module moves, and must move with it."""
    first = module(priors=[GaussianBlur()])
    losses = torch.tensor([1.0, float("nan"), 1.0, 1.0, 1.0, 1.0])
    first.divergence.check(first.canvas.image, torch.ones(6))  # a log step: this image becomes the last finite one
    first.divergence.check(first.canvas.image, losses)
    assert first.divergence.mask.tolist() == [False, True, False, False, False, False]
    resumed = module(priors=[GaussianBlur()])
    resumed.load_state_dict(first.state_dict(), strict=False)
    assert resumed.divergence.any and torch.equal(resumed.divergence.last_good, first.divergence.last_good)
    assert step_on(resumed, "meta") == []
    assert resumed.divergence.last_good.device.type == "meta"


def test_a_sharded_module_computes_only_its_own_targets_on_its_device():
    """Each process computes the targets of its own share only, with the network where the run runs."""
    m = module(LayerInversion([0, 1, "patch_embed"], stack=False))
    m.take_shard(1, 2)  # targets 3..5 of 6: layer 1 for p1, then patch_embed for both photographs
    assert m.shard == [3, 4, 5]
    assert step_on(m, "meta") == []
    objective = m.objective
    assert not hasattr(objective, "target_0")
    assert objective.target_1.shape[0] == 1 and objective.target_2.shape[0] == 2
    assert objective.target_1.device.type == "meta" and objective.noise_shift_l2.shape == (3,)


def test_lbfgs_with_a_gradient_scaler_is_refused_before_the_first_step():
    from repinv.engine.module import check_scaler

    scaled = SimpleNamespace(scaler=object())
    lbfgs = torch.optim.LBFGS([torch.zeros(2, requires_grad=True)])
    with pytest.raises(RepinvError, match="optimizer=lbfgs with precision=16-mixed"):
        check_scaler(lbfgs, scaled)
    check_scaler(lbfgs, SimpleNamespace(scaler=None))
    check_scaler(torch.optim.Adam([torch.zeros(2, requires_grad=True)]), scaled)


def test_matmul_precision_highest_keeps_cudnn_out_of_tf32():
    from repinv.engine.precision import set_matmul_precision

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        set_matmul_precision("highest")
        assert torch.backends.cudnn.allow_tf32 is False
        set_matmul_precision("high")
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


HOST_READS = ("item", "tolist", "__bool__", "cpu", "numpy")


def host_reads(run) -> collections.Counter:
    """Calls of the tensor methods that read a value back to the host, made while `run()` runs, by caller."""
    calls: collections.Counter = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(name):
        def read(self, *args, **kwargs):
            calls[name] += 1
            return originals[name](self, *args, **kwargs)
        return read

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, counting(name))
        run()
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
    return calls


# Jitter and scale_rotate are left out: their draws come from the module's CPU generator (so a resumed
# run repeats them) and are read on the host by design; they never wait for the device. So is Adam
# (class and feature generation's default): PyTorch keeps its step count a CPU tensor and reads it.
SYNC_CASES = {
    "default, progress bar shown": [],
    "fourier": ["param=fourier"],
    "pyramid": ["param=pyramid"],
    "penalties and octaves": ["priors=penalties", "+priors.octaves._target_=repinv.priors.Octaves"],
    "one pass per layer": ["objective.stack=false"],
    "class": ["objective=class", "classes=[1,2]", "priors=blur", "optimizer=sgd"],
    "feature": ["objective=feature", "objective.units=[0,[1,2]]", "priors=blur", "optimizer=sgd"],
}


@pytest.mark.parametrize("case", SYNC_CASES)
def test_a_step_that_does_not_log_never_reads_the_device(run_repinv, case):
    """A 12-step and a 4-step run that log only at their last step make the same host reads."""
    def run(steps):
        return host_reads(lambda: run_repinv(*SYNC_CASES[case], f"steps={steps}", "log_every=1000", "image_every=1000",
                                             "logger=none", "checkpoint_every=0", "layers=[0,patch_embed]", name=f"s{steps}"))

    short, long = run(4), run(12)
    assert long == short, f"8 more steps made {dict(long - short)} more host reads"
