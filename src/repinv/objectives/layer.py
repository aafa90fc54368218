"""Layer inversion: match a hidden layer's output for a target photograph (the study's method)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from repinv.errors import RepinvError
from repinv.inputs.images import TargetImage
from repinv.metrics import HEADLINE
from repinv.models.taps import LayerTap, SharedPass, layer_label, resolve_layers, tap_outputs
from repinv.objectives.base import Objective, positive, target_seed

log = logging.getLogger(__name__)

LOSSES = ("l1", "sse", "mse", "cosine")
OUTPUT_L2 = "output_l2"  # a record's distance of its layer output to the target
NOISE_SHIFT_L2 = "noise_shift_l2"  # the distance of the noise-shifted target's output to the target's
ACCURATE = "accurate"  # whether that distance is below the noise-shifted target's (the study's criterion)
STACK = ("auto", True, False)


def distance(output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample distance over all non-batch dims: l1 = Σ|d|, sse = Σd² (the squared L2 norm), mse = mean d²,
    cosine = 1 − cos. Sums keep the gradient's scale where the study's step works (l1 and sse alike); the mean divides
    it by the number of outputs."""
    o, t = output.flatten(1).float(), target.flatten(1).float()
    if kind == "l1":
        return (o - t).abs().sum(1)
    if kind == "sse":
        return (o - t).pow(2).sum(1)
    if kind == "mse":
        return (o - t).pow(2).mean(1)
    if kind == "cosine":
        return 1 - F.cosine_similarity(o, t, dim=1)
    raise RepinvError(f"objective.loss={kind} is not a layer loss. Use one of {', '.join(LOSSES)}.")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a GPU runs its kernels after the host has moved on)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(step: Callable[[], None], device: torch.device) -> float:
    """Wall time of `step()` on `device` after one warm-up call (the first call packs weights and warms caches)."""
    step()
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def noise_shift(seed: int, image: TargetImage) -> torch.Tensor:
    """The unit noise ε of an image's accuracy bar ‖O(a) − O(a + ε/18)‖: drawn from the seed and the image's name
    only, so the bar is the same whichever images share the run."""
    gen = torch.Generator().manual_seed(target_seed(seed, "noise-shift", image.name))
    return torch.randn(image.pixels.shape, generator=gen)


class LayerInversion(Objective):
    """Match a layer's output for a target photograph: one target per (layer, image), layer-major.

    The noise-shift baseline ‖O(a) − O(a + N(0, noise_std))‖ is the study's bar for an
    accurate reconstruction: `accurate` means the output distance is below it.
    """

    kind = "layer"
    needs_images = True
    score_metric = OUTPUT_L2
    stats = (OUTPUT_L2, NOISE_SHIFT_L2, ACCURATE)
    caption_metric = HEADLINE
    labels = ("layer",)  # the layer as spelled (5 or blocks.5); its seed comes from `module`, the path it resolves to

    def __init__(self, layers, loss: str = "l1", scale: float = 0.15, noise_std: float = 1 / 18, stack: bool | str = "auto"):
        super().__init__()
        if loss not in LOSSES:
            raise RepinvError(f"objective.loss={loss} is not a layer loss. Use one of {', '.join(LOSSES)}.")
        self.layer_specs = layers
        self.loss = loss
        self.scale = positive("scale", scale, "the loss is scale x the distance, so 0 optimises nothing and a negative scale "
                              "pushes the layer's output away from the target; the default is 0.15.")
        self.noise_std = positive("noise_std", noise_std, "the noise-shift baseline that defines an accurate "
                                  "reconstruction perturbs the target photograph by N(0, noise_std); the study uses 1/18.")
        if stack not in STACK:
            raise RepinvError(f"objective.stack={stack} is not a choice; use auto (the faster of the shared pass and one "
                              "pass per layer, timed on the run's own first step), true (shared) or false (one pass per layer).")
        self.stack = stack
        self.stacked: bool | None = None  # what `tune` chose (kept in checkpoints, so a resumed run keeps it)
        self.taps: list[LayerTap] = []
        self.shared: SharedPass | None = None
        self._rows = None
        self.prepared = False  # whether this process's targets are computed (see `prepare`)

    @torch.no_grad()
    def setup(self, net, prep, images, seed):
        """The taps (each checked to run), the targets' identities and photographs; the target activations are computed
        by `prepare`."""
        self.taps = resolve_layers(net, self.layer_specs)
        pixels = torch.stack([im.pixels for im in images])
        shifted = pixels + torch.stack([noise_shift(seed, im) for im in images]) * self.noise_std
        dev = next(net.parameters()).device
        self.register_buffer("shifted", shifted.to(dev), persistent=False)
        x = prep(pixels.to(dev))
        tap_outputs(net, self.taps, x[:1])
        self.shared = SharedPass.checked(net, self.taps, x) if self.stack else None
        self.reference = pixels.to(dev).repeat(len(self.taps), 1, 1, 1)
        self.group = len(images)
        self.__dict__["prep"] = prep  # the module's normalisation: not a submodule
        self.shard(list(range(len(self.taps) * len(images))))
        self.targets = [
            {"image": im.name, "layer": tap.label, "module": tap.path}
            for tap in self.taps
            for im in images
        ]

    def shard(self, index):
        self.index = [int(i) for i in index]
        self._rows, self.prepared = None, False

    @torch.no_grad()
    def prepare(self, net):
        """The targets and noise-shift baselines of this process's targets only, computed by `net` where it runs.

        Called before the first step (after the module moved to its device and took its shard);
        a forward without it prepares with the network it is given.
        """
        _, images, order, _, back = self._plan(self.shifted.device)
        pixels, baseline = self.reference[: self.group], []
        for g in order:
            target = self.taps[g](net, self.prep(pixels[images[g]])).float()
            self.register_buffer(f"target_{g}", target, persistent=False)
            shifted = self.taps[g](net, self.prep(self.shifted[images[g]])).float()
            baseline.append((shifted - target).flatten(1).norm(dim=1))
        rows = torch.cat(baseline)
        self.register_buffer("noise_shift_l2", rows if back is None else rows[back], persistent=False)
        self.prepared = True

    def tune(self, net, x):
        """With `stack=auto`, keep the shared pass only if a step through it is faster than one pass per layer.

        Which is faster depends on the CPU (its caches, its matmul kernels) and the batch: the shared
        pass runs fewer, larger batches. Timed on this run's own first view, forward and input
        gradient, after one warm-up step each. A resumed run keeps the choice its checkpoint holds.
        """
        if self.stack != "auto" or self.shared is None:
            return
        shared = self.shared
        if self.stacked is None:
            seconds = {}
            for stacked in (True, False):
                self.shared, self._rows = (shared if stacked else None), None
                seconds[stacked] = _seconds(lambda: self(net, x.detach().requires_grad_())[0].sum().backward(), x.device)
            self.stacked = seconds[True] <= seconds[False]
            log.info("objective.stack=auto: a step takes %.3f s through the shared pass and %.3f s one layer at a "
                     "time; using %s", seconds[True], seconds[False], "the shared pass" if self.stacked else "one pass per layer")
        self.shared, self._rows = (shared if self.stacked else None), None

    def get_extra_state(self):
        return {"stacked": self.stacked}

    def set_extra_state(self, state):
        self.stacked = state.get("stacked")

    def _plan(self, device: torch.device):
        """Derived once per set of targets and device: rows of each layer in this process's batch (a slice:
        targets are layer-major and shards contiguous), their images, the order layers run in, and the
        permutation into that order and back (None when the rows already are in it). Index tensors
        live on `device`, so a step copies nothing to it."""
        if self._rows is None or self._rows[0] != device:
            layer = [i // self.group for i in self.index]
            rows = {g: (layer.index(g), len(layer) - layer[::-1].index(g)) for g in dict.fromkeys(layer)}
            order = [g for g in (self.shared.order if self.shared else range(len(self.taps))) if g in rows]
            perm = [r for g in order for r in range(*rows[g])]
            images = {g: torch.tensor([self.index[r] % self.group for r in range(*rows[g])], device=device) for g in rows}
            moved = perm != sorted(perm)
            index = torch.tensor(perm, device=device)
            self._rows = (device, (rows, images, order, index if moved else None, torch.argsort(index) if moved else None))
        return self._rows[1]

    def forward(self, net, x):
        rows, _, order, perm, back = self._plan(x.device)
        if not self.prepared:
            self.prepare(net)
        if self.shared is not None:
            counts = [rows[g][1] - rows[g][0] if g in rows else 0 for g in range(len(self.taps))]
            outs = dict(enumerate(self.shared(net, x if perm is None else x[perm], counts)))
        else:
            outs = {g: self.taps[g](net, x[slice(*rows[g])]) for g in order}
        losses, l2 = [], []
        for g in order:
            target = getattr(self, f"target_{g}")
            losses.append(distance(outs[g], target, self.loss))
            l2.append((outs[g].detach().float() - target).flatten(1).norm(dim=1))
        loss, output_l2 = torch.cat(losses), torch.cat(l2)
        if back is not None:
            loss, output_l2 = loss[back], output_l2[back]
        stats = {
            OUTPUT_L2: output_l2,
            NOISE_SHIFT_L2: self.noise_shift_l2,
            ACCURATE: (output_l2 < self.noise_shift_l2).float(),
        }
        return self.scale * loss, stats

    def column(self, record):
        return record["layer"]

    def finalize(self, record, metrics=()):
        return super().finalize({**record, ACCURATE: bool(record[ACCURATE])}, metrics)

    def tags(self):
        return [f"layer:{tap.label}" for tap in self.taps]

    @classmethod
    def plan(cls, cfg, depth):
        """Each entry of `layers=` named as the records name it: an index from the end (-1) by its place in the model,
        whose number of hidden layers `depth()` counts (called only for such an index)."""
        specs = cfg.get("layers")
        specs = list(specs) if isinstance(specs, Sequence) and not isinstance(specs, str) else [specs]
        indices = [int(s) if str(s).lstrip("-").isdigit() else None for s in specs]
        depth = depth() if any(i is not None and i < 0 for i in indices) else 0
        labels = [str(s) if i is None else layer_label(i + depth if i < 0 else i) for s, i in zip(specs, indices)]
        return [{"layer": label, "column": label} for label in labels]
