"""Class generation: draw what the model sees in a class, from noise (the study's second tool)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from repinv.errors import RepinvError, named_once
from repinv.objectives.base import MORE, Objective, positive, samples_count

CLASS_LOSSES = ("abs", "logit", "ce")
LOGIT = "logit"  # a record's target logit
RANK = "rank"  # a record's class rank among all classes (0 = top)
PROB = "prob"  # its softmax probability


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
    score_metric = RANK  # a sweep minimises the class's rank among all classes (0 = top)
    stats = (LOGIT, PROB, RANK)

    def __init__(self, classes, loss: str = "abs", constant: float = 100.0, samples: int = 1, scale: float = 1.0):
        super().__init__()
        if loss not in CLASS_LOSSES:
            raise RepinvError(f"objective.loss={loss} is not a class loss. Use one of {', '.join(CLASS_LOSSES)} "
                              "(abs = |C - logit|, the study's).")
        if classes is None or (not isinstance(classes, (int, str)) and len(classes) == 0):
            raise RepinvError("objective=class needs classes: ImageNet indices or names, e.g. classes=[207,'tiger shark'].")
        self.class_specs = [classes] if isinstance(classes, (int, str)) else list(classes)
        self.loss, self.constant, self.samples = loss, float(constant), samples_count(samples, "class")
        self.scale = positive("scale", scale, "the loss is scale x the class loss, so 0 optimises nothing and a negative "
                              "scale drives the class's logit down; 1.0 is the default.")

    @torch.no_grad()
    def setup(self, net, prep, images, seed):
        from repinv.inputs.classes import class_name, resolve_class

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
        named_once("classes", self.class_specs, idx, "class", MORE)
        self.targets = [
            {"image": f"sample{k}", "class": i, "class_name": class_name(i, int(h))}
            for i in idx
            for k in range(self.samples)
        ]
        self.register_buffer("classes", torch.tensor([r["class"] for r in self.targets]), persistent=False)
        self.register_buffer("index", torch.arange(len(self.targets), device=self.classes.device), persistent=False)

    def shard(self, index):
        self.index = torch.as_tensor(index, device=self.index.device)

    def forward(self, net, x):
        logits = _logits(net, x)
        cls = self.classes[self.index]
        target = logits.gather(1, cls[:, None]).squeeze(1)
        if self.loss == "abs":
            losses = (self.constant - target).abs()
        elif self.loss == "logit":
            losses = -target
        else:
            losses = F.cross_entropy(logits, cls, reduction="none")
        with torch.no_grad():
            stats = {
                LOGIT: target.detach(),
                PROB: logits.softmax(1).gather(1, cls[:, None]).squeeze(1),
                RANK: (logits > target[:, None]).sum(1).float(),
            }
        return self.scale * losses, stats

    def column(self, record):
        """The class's name, with its index where another class of the run has that name too, in any case (ImageNet's
        134 and 517 are both 'crane'; 264 'Cardigan' and 474 'cardigan' share a file on a case-insensitive file
        system): columns name the images a run writes, one per class."""
        name = record["class_name"].casefold()
        shared = {r["class"] for r in self.targets if r["class_name"].casefold() == name}
        return record["class_name"] if len(shared) == 1 else f"{record['class_name']} ({record['class']})"

    def caption(self, record, metrics=()):
        return f"p={record['prob']:.2f}"

    def name(self):
        return "+".join(str(c) for c in self.class_specs)

    def tags(self):
        return [f"class:{c}" for c in dict.fromkeys(r["class"] for r in self.targets)]
