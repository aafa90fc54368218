"""The Objective seam: everything a run knows about what the image batch is optimised for.

An objective owns its targets (named in `setup`, computed once in `prepare` where the run runs, never trained), returns one
loss per target image and per-target statistics, and names and describes its results: each final
record's `column` (what the reconstruction shows) and `caption` (its headline number), the
run's W&B tags and name, whether it needs target photographs and which metric a sweep
minimises. The rest of repinv reads these and never asks which objective it runs.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from repinv.errors import RepinvError
from repinv.inputs.images import TargetImage
from repinv.metrics import describe

# Images one objective may generate per unit or class: each is a full canvas in memory for the whole run.
MAX_SAMPLES = 1024
MORE = ", and draw more of one with objective.samples=N"  # how to ask for more images of one class or unit


def positive(name: str, value: float, meaning: str) -> float:
    """`value` as a float, or a RepinvError: a loss weight or noise scale of 0 or below optimises nothing, or the opposite."""
    if not value > 0:
        raise RepinvError(f"objective.{name}={value} must be positive: {meaning}")
    return float(value)


def samples_count(value, per: str) -> int:
    """`objective.samples` as a whole number in [1, MAX_SAMPLES], or a RepinvError."""
    if value != int(value) or not 1 <= value <= MAX_SAMPLES:
        raise RepinvError(f"objective.samples={value} must be a whole number from 1 to {MAX_SAMPLES} (images generated per "
                          f"{per}, each from its own noise); for more, run several seeds (seed=0,1,2 in a multirun).")
    return int(value)


def target_seed(seed: int, *parts) -> int:
    """A seed that depends on the run seed and the target's identity only (never on rank)."""
    return (seed * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2**63)


def target_key(record: dict) -> str:
    """A target's name in logged scalars and captions: its identity's fields but the module path."""
    return "/".join(str(v) for k, v in record.items() if k != "module")


class Objective(nn.Module):
    """Base class: `setup` names the targets, `prepare` computes them, `forward` gives per-target losses and stats.

    `targets` hold each target's identity (they name its scalars and checkpoints); `finalize`
    turns a target's identity plus its final metrics into the record metrics.json keeps.
    """

    kind = "objective"  # the W&B job type and a tag
    needs_images = False  # whether the run loads the photographs of `image=` as targets
    score_metric = "loss"  # the record field whose mean over targets a sweep minimises
    stats: tuple[str, ...] = ()  # the per-target statistics `forward` returns: record fields besides the loss and metrics
    caption_metric: str | None = None  # the record field shown under each picture (None: the run's first metric)
    labels: tuple[str, ...] = ()  # record fields that only name a target as it was spelled (not part of its seed)

    def __init__(self):
        super().__init__()
        self.targets: list[dict] = []
        # target pixels per record for input-space metrics; None when there is no target photograph
        self.register_buffer("reference", None, persistent=False)

    def setup(self, net: nn.Module, prep: Callable, images: Sequence[TargetImage], seed: int) -> None:
        raise NotImplementedError

    def shard(self, index: list[int]) -> None:
        """From now on `forward` takes and scores only the targets in `index` (this process's share).

        `targets` and `reference` stay whole so rank 0 can name and write every target.
        """
        raise RepinvError(
            f"objective '{self.kind}' cannot split its targets across processes; "
            "run it with trainer.devices=1 trainer.num_nodes=1."
        )

    def take_rows(self, start: int, stop: int) -> None:
        """Keep the targets [start, stop) (see `repinv.engine.sharding.Rows`): `shard` of that range."""
        self.shard(list(range(start, stop)))

    def prepare(self, net: nn.Module) -> None:
        """Compute what the steps compare against (e.g. target activations) with `net`, on its device,
        for this process's targets only; called before the first step, after `shard`."""

    def check(self, net: nn.Module, input_size: tuple[int, int]) -> None:
        """After `setup`, before the first step: checks that need the input size (raise RepinvError)."""

    def tune(self, net: nn.Module, x: torch.Tensor) -> None:
        """Choices that depend on the device, precision and CPU at hand, made once before the first step.

        `net` is the network the steps run through, `x` this process's normalised first view.
        """

    def init_seeds(self, seed: int) -> list[int]:
        """One noise seed per target, from the seed and the target's record but its `labels`: two spellings
        of one target start from the same noise."""
        return [target_seed(seed, *(v for k, v in r.items() if k not in self.labels)) for r in self.targets]

    # -- naming and describing the results ------------------------------------------
    def column(self, record: dict) -> str:
        """What a target's reconstruction shows: its grid column and file name ("L5", "tabby", "unit 3")."""
        raise NotImplementedError

    def caption(self, record: dict, metrics: Sequence[str] = ()) -> str:
        """The headline number of a final record, shown under its picture: `caption_metric`, else the first
        of the run's `metrics` (their names, in order) the record holds (a run may drop any metric), else
        the score metric or the loss."""
        names = [self.caption_metric, *metrics, self.score_metric, "loss"]
        name = next(n for n in names if n is not None and isinstance(record.get(n), (int, float)))
        return describe(name, record[name])

    def finalize(self, record: dict, metrics: Sequence[str] = ()) -> dict:
        """A target's final record as metrics.json keeps it: its stats typed, its column and caption added
        (`metrics`: the names of the metrics the run computed, in order, for the caption)."""
        return {**record, "column": self.column(record), "caption": self.caption(record, metrics)}

    def name(self) -> str:
        """The run name's part that says what was optimised (after `setup`), e.g. L0+L5."""
        return "+".join(dict.fromkeys(self.column(r) for r in self.targets))

    def tags(self) -> list[str]:
        """W&B tags for what was optimised (after `setup`), besides the model's and `kind`."""
        return []

    @classmethod
    def plan(cls, cfg, depth: Callable[[], int]) -> list[dict]:
        """The records a run of this objective's config node would write, as far as the job's config tells
        without running it (the cells of a sweep job that failed before it wrote any); [] if unknown. `depth()` is
        the number of hidden layers of the job's model (it builds the model's structure: call it only if needed)."""
        return []
