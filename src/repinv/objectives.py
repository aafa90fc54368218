"""Objectives: what the image batch is optimised for.

Each objective owns its targets (computed once, never trained), returns one loss per
target image, and reports per-target statistics. The LightningModule knows nothing of
layers or classes; it sums the per-target losses so every target's gradient is the same
as in a run of its own.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from repinv.errors import RepinvError
from repinv.images import TargetImage
from repinv.taps import LayerTap, SharedPass, resolve_layers

LOSSES = ("l1", "mse", "cosine")


def distance(output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample distance over all non-batch dims: l1 = Σ|d|, mse = mean d², cosine = 1 − cos."""
    o, t = output.flatten(1).float(), target.flatten(1).float()
    if kind == "l1":
        return (o - t).abs().sum(1)
    if kind == "mse":
        return (o - t).pow(2).mean(1)
    if kind == "cosine":
        return 1 - F.cosine_similarity(o, t, dim=1)
    raise RepinvError(f"objective.loss={kind} is not a layer loss. Use one of {', '.join(LOSSES)}.")


def target_seed(seed: int, *parts) -> int:
    """A seed that depends on the run seed and the target's identity only (never on rank)."""
    return (seed * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2**63)


class Objective(nn.Module):
    """Base class: `setup` computes the targets, `forward` gives per-target losses and stats."""

    kind = "objective"

    def __init__(self):
        super().__init__()
        self.records: list[dict] = []
        # target pixels per record for input-space metrics; None when there is no target photograph
        self.register_buffer("reference", None, persistent=False)

    def setup(self, net: nn.Module, prep: Callable, images: Sequence[TargetImage], seed: int) -> None:
        raise NotImplementedError

    def shard(self, index: list[int]) -> None:
        """From now on `forward` takes and scores only the targets in `index` (this process's share).

        `records` and `reference` stay whole so rank 0 can name and write every target.
        """
        raise RepinvError(
            f"objective '{self.kind}' cannot split its targets across processes; "
            "run it with trainer.devices=1 trainer.num_nodes=1."
        )

    def init_seeds(self, seed: int) -> list[int]:
        """One noise seed per target, from the seed and the target's record."""
        return [target_seed(seed, *r.values()) for r in self.records]


class LayerInversion(Objective):
    """Match a layer's output for a target photograph: one target per (layer, image), layer-major.

    The noise-shift baseline ‖O(a) − O(a + N(0, noise_std))‖ is the study's bar for an
    accurate reconstruction: `accurate` means the output distance is below it.
    """

    kind = "layer"

    def __init__(self, layers, loss: str = "l1", scale: float = 0.15, noise_std: float = 1 / 18, stack: bool = True):
        super().__init__()
        if loss not in LOSSES:
            raise RepinvError(f"objective.loss={loss} is not a layer loss. Use one of {', '.join(LOSSES)}.")
        self.layer_specs = layers
        self.loss = loss
        self.scale = float(scale)
        self.noise_std = float(noise_std)
        self.stack = bool(stack)  # several layers in one shared pass (SharedPass) where it checks out
        self.taps: list[LayerTap] = []
        self.shared: SharedPass | None = None
        self._rows = None

    @torch.no_grad()
    def setup(self, net, prep, images, seed):
        self.taps = resolve_layers(net, self.layer_specs)
        pixels = torch.stack([im.pixels for im in images])
        gen = torch.Generator().manual_seed(target_seed(seed, "noise-shift"))
        shifted = pixels + torch.randn(pixels.shape, generator=gen) * self.noise_std
        dev = next(net.parameters()).device
        pixels, shifted = pixels.to(dev), shifted.to(dev)
        baseline, targets = [], []
        for g, tap in enumerate(self.taps):
            targets.append(tap(net, prep(pixels)).float())
            self.register_buffer(f"target_{g}", targets[-1], persistent=False)
            baseline.append((tap(net, prep(shifted)).float() - targets[-1]).flatten(1).norm(dim=1))
        self.register_buffer("noise_shift_l2", torch.cat(baseline), persistent=False)
        self.shared = SharedPass.build(net, self.taps, prep(pixels), targets) if self.stack else None
        self.reference = pixels.repeat(len(self.taps), 1, 1, 1)
        self.group = len(images)
        self.index = torch.arange(len(self.taps) * len(images))
        self._rows = None
        self.records = [
            {"image": im.name, "layer": tap.label, "module": tap.module or tap.label}
            for tap in self.taps
            for im in images
        ]

    def shard(self, index):
        self.index = torch.as_tensor(index)
        self._rows = None
        self.noise_shift_l2 = self.noise_shift_l2[self.index]

    def _plan(self):
        """Derived once per set of targets: rows of each layer in this process's batch, their target
        indices, the order layers run in, and the permutation into that order and back (None when
        the rows already are in it)."""
        if self._rows is None:
            layer, image = self.index // self.group, self.index % self.group  # targets are layer-major
            rows = [(layer == g).nonzero().flatten() for g in range(len(self.taps))]
            order = [g for g in (self.shared.order if self.shared else range(len(self.taps))) if len(rows[g])]
            perm = torch.cat([rows[g] for g in order])
            moved = not torch.equal(perm, torch.arange(len(perm)))
            self._rows = (rows, [image[r] for r in rows], order, perm if moved else None, torch.argsort(perm) if moved else None)
        return self._rows

    def forward(self, net, x):
        rows, images, order, perm, back = self._plan()
        if self.shared is not None:
            outs = self.shared(net, x if perm is None else x[perm], [len(r) for r in rows])
        else:
            outs = {g: self.taps[g](net, x[rows[g][0] : rows[g][-1] + 1]) for g in order}
        losses, l2 = [], []
        for g in order:
            target = getattr(self, f"target_{g}")[images[g]]
            losses.append(distance(outs[g], target, self.loss))
            l2.append((outs[g].detach().float() - target).flatten(1).norm(dim=1))
        loss, output_l2 = torch.cat(losses), torch.cat(l2)
        if back is not None:
            loss, output_l2 = loss[back], output_l2[back]
        stats = {
            "output_l2": output_l2,
            "noise_shift_l2": self.noise_shift_l2,
            "accurate": (output_l2 < self.noise_shift_l2).float(),
        }
        return self.scale * loss, stats


CLASS_LOSSES = ("abs", "logit", "ce")


def _logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = net(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.float()


class ClassGeneration(Objective):
    """Draw what the model sees in a class: one target per (class, sample), class-major.

    Losses per target: `abs` = |C − logit_i| (the study, C = `constant`), `logit` = −logit_i,
    `ce` = cross-entropy towards class i. Stats: the target logit, its softmax probability and
    its rank among all classes (0 = top).
    """

    kind = "class"

    def __init__(self, classes, loss: str = "abs", constant: float = 100.0, samples: int = 1, scale: float = 1.0):
        super().__init__()
        if loss not in CLASS_LOSSES:
            raise RepinvError(f"objective.loss={loss} is not a class loss. Use one of {', '.join(CLASS_LOSSES)} "
                              "(abs = |C - logit|, the study's).")
        if classes is None or (not isinstance(classes, (int, str)) and len(classes) == 0):
            raise RepinvError("objective=class needs classes: ImageNet indices or names, e.g. classes=[207,'tiger shark'].")
        if int(samples) < 1:
            raise RepinvError(f"objective.samples={samples} must be at least 1 (images generated per class).")
        self.class_specs = [classes] if isinstance(classes, (int, str)) else list(classes)
        self.loss, self.constant, self.samples, self.scale = loss, float(constant), int(samples), float(scale)

    @torch.no_grad()
    def setup(self, net, prep, images, seed):
        from repinv.classes import class_name, resolve_class

        h = getattr(net, "num_classes", None)
        probe = None
        if not h:
            dev = next(net.parameters()).device
            size = getattr(net, "default_cfg", {}).get("input_size", (3, 224, 224))[1:]
            probe = _logits(net, torch.zeros(1, 3, *size, device=dev))
            h = probe.shape[-1]
        if not h:
            raise RepinvError("objective=class needs a classifier head, but the model has no logits (num_classes=0).")
        idx = [resolve_class(c, int(h)) for c in self.class_specs]
        self.records = [
            {"image": f"sample{k}", "class": i, "class_name": class_name(i, int(h))}
            for i in idx
            for k in range(self.samples)
        ]
        self.register_buffer("classes", torch.tensor([r["class"] for r in self.records]), persistent=False)
        self.index = torch.arange(len(self.records))

    def shard(self, index):
        self.index = torch.as_tensor(index)

    def forward(self, net, x):
        logits = _logits(net, x)
        cls = self.classes[self.index.to(self.classes.device)]
        target = logits.gather(1, cls[:, None]).squeeze(1)
        if self.loss == "abs":
            losses = (self.constant - target).abs()
        elif self.loss == "logit":
            losses = -target
        else:
            losses = F.cross_entropy(logits, cls, reduction="none")
        with torch.no_grad():
            stats = {
                "logit": target.detach(),
                "prob": logits.softmax(1).gather(1, cls[:, None]).squeeze(1),
                "rank": (logits > target[:, None]).sum(1).float(),
            }
        return self.scale * losses, stats
