"""What a ledger's plan costs before it runs: one counted step per network, times the steps of its runs.

Runs that differ only in seed, learning rate, schedule or input normalisation do the same work a
step, so each network is counted once: the second step (not a log step) of a 3-step run with
`repinv.reporting.cost.StepCost`, made by the study runner in the ledger's `cost/` folder (and
reused from there). FLOPs do not depend on the device; a device's peak turns them into the least
time the plan needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from repinv import study
from repinv.claims.ledger import network_name
from repinv.conf import override_key
from repinv.errors import RepinvError
from repinv.reporting.cost import StepCount
from repinv.reporting.tables import md_table

# Overrides (keys, and the keys below them) that leave a step's work as it is: what runs of one network may
# differ in. Where a run runs (trainer) and what it logs are among them, so a GPU plan is counted on any machine,
# and its weights, so a trained run is counted offline on an untrained network of the same shape.
SAME_WORK = ("seed", "steps", "scheduler", "optimizer.lr", "model.mean", "model.std", "trainer", "logger",
             "checkpoint_every", "log_every", "image_every", "hydra", "model.pretrained", "model.checkpoint",
             "model.weights")
PLAN_FILE = "cost.json"  # in a ledger folder: each network's NetworkCost (a run folder's cost.json is a StepCount)
COUNTING = ["steps=3", "logger=none", "callbacks.checkpoints=null",
            "+callbacks.cost._target_=repinv.reporting.cost.StepCost", "+callbacks.cost.out_dir=${output_dir}"]


@dataclass
class NetworkCost:
    """One network of the plan: its runs and their steps, and what one step of it costs."""

    network: tuple[str, ...]
    runs: int
    steps: int
    flops_per_step: float
    kernels_per_step: int
    steps_left: int = 0  # the steps of its runs not finished in the ledger folder yet

    @property
    def flops(self) -> float:
        return self.flops_per_step * self.steps

    @property
    def flops_left(self) -> float:
        return self.flops_per_step * self.steps_left


def network(overrides: Iterable[str]) -> tuple[str, ...]:
    """A run's overrides without those that leave its work per step as it is."""
    def same_work(key: str) -> bool:
        return any(key == k or key.startswith(f"{k}.") for k in SAME_WORK)

    return tuple(o for o in overrides if not same_work(override_key(o)))


def steps(overrides: Sequence[str]) -> int:
    """The steps a ledger's run makes (its plan always names them)."""
    return int(study.value(overrides, "steps"))


def count(overrides: Sequence[str], root: Path) -> StepCount:
    """One step of the run these overrides describe, counted by a 3-step run of the study runner under `root`
    (a finished count is reused)."""
    run = study.make(study.run_for(root, [*overrides, *COUNTING]))
    if not run.ok:
        raise RepinvError(f"Counting the step of {' '.join(overrides)} failed ({run.status}). Fix that network's "
                          "overrides (run them alone with `repinv ... steps=3`), or leave its claim out with --claims.")
    return StepCount.load(run.folder)


def plan_cost(runs: Iterable[study.Run], root: Path) -> list[NetworkCost]:
    """Each network of these runs counted once (its counting run under `root`): its runs, their steps in all and
    those not finished yet, and one step's FLOPs and kernels."""
    groups: dict[tuple[str, ...], list[study.Run]] = {}
    for run in runs:
        groups.setdefault(network(run.overrides), []).append(run)
    out = []
    for key, members in groups.items():
        counted, made = count(key, root), [(steps(r.overrides), r.finished) for r in members]
        out.append(NetworkCost(key, len(members), sum(s for s, _ in made), counted.flops_per_step,
                               counted.kernel_ops_per_step, sum(s for s, finished in made if not finished)))
    return out


def cost_table(costs: Sequence[NetworkCost], peaks: dict[str, float]) -> str:
    """Markdown: per network its runs, steps, GFLOP a step and PFLOP in all; then the total and, per named peak
    (TFLOP/s), the least time the whole plan takes at it."""
    header, names = ["network", "runs", "steps", "GFLOP/step", "kernels/step", "PFLOP"], [c.network for c in costs]
    lines = md_table([dict(zip(header, [network_name(c.network, names), c.runs, c.steps, f"{c.flops_per_step / 1e9:.3g}",
                                        c.kernels_per_step, f"{c.flops / 1e15:.3g}"]))
                      for c in sorted(costs, key=lambda c: -c.flops)], header)
    total = sum(c.flops for c in costs)
    lines += ["", f"In all: {sum(c.runs for c in costs)} runs, {total / 1e15:.3g} PFLOP (matmuls, convolutions and "
              "attention, forward and input gradient, counted by torch's FlopCounterMode on one step of each network "
              "that is not a log step)."]
    left = sum(c.flops_left for c in costs)
    if left < total:
        lines.append(f"The runs not finished in the ledger folder yet: {left / 1e15:.3g} PFLOP.")
    lines += [f"- at {name} ({tflops:g} TFLOP/s): at least {total / tflops / 1e12 / 60:.3g} min"
              + (f", {left / tflops / 1e12 / 60:.3g} min for the runs not finished" if left < total else "")
              for name, tflops in peaks.items()]
    return "\n".join(lines) + "\n"


def write_plan(costs: Sequence[NetworkCost], out: Path, command: str, peaks: dict[str, float]) -> str:
    """The plan's counts as `<out>/cost.json` and its table, made with `command`, as `<out>/cost.md`; returns the table."""
    (out / PLAN_FILE).write_text(json.dumps([asdict(c) for c in costs], indent=1) + "\n")
    text = f"Made with `{command}`.\n\n{cost_table(costs, peaks)}"
    (out / PLAN_FILE).with_suffix(".md").write_text(text)
    return text

