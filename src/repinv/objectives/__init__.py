"""Objectives: what the image batch is optimised for (`objective=` picks one by its `_target_`).

Each objective owns its targets (computed once, never trained), returns one loss per
target image, and reports per-target statistics. The LightningModule knows nothing of
layers or classes; it sums the per-target losses so every target's gradient is the same
as in a run of its own. See `base.Objective` for what an objective tells the rest of a run.
"""

from repinv.objectives.base import Objective, target_key, target_seed
from repinv.objectives.classgen import CLASS_LOSSES, PROB, RANK, ClassGeneration
from repinv.objectives.layer import ACCURATE, LOSSES, OUTPUT_L2, LayerInversion, distance

__all__ = ["ACCURATE", "CLASS_LOSSES", "LOSSES", "OUTPUT_L2", "PROB", "RANK", "ClassGeneration", "LayerInversion", "Objective",
           "distance", "target_key", "target_seed"]
