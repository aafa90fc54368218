"""What one step of a run costs in work, independent of the device: its FLOPs and its aten operators.

Opt in with `+callbacks.cost._target_=repinv.reporting.cost.StepCost`; the run folder then gets
`cost.json`. `repinv-claims --cost` uses it to count what a whole ledger needs before running it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

COST_FILE = "cost.json"


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch counts its GPU attention kernels but not the CPU one: counted by the same formulas, a step costs the same
# FLOPs on every device.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


class _Operators(TorchDispatchMode):
    """Counts the aten operators dispatched while active: all of them, and those that are not views."""

    def __init__(self):
        super().__init__()
        self.ops = self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.kernels += not func.is_view
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class StepCount:
    """What one step dispatched: FLOPs, aten operators, and operators that are not views."""

    flops_per_step: int = 0
    aten_ops_per_step: int = 0
    kernel_ops_per_step: int = 0

    @classmethod
    def load(cls, folder: str | Path) -> StepCount:
        """The count a run with `StepCost(out_dir=folder)` wrote."""
        record = json.loads((Path(folder) / COST_FILE).read_text())
        return cls(**{f.name: record[f.name] for f in fields(cls)})


class StepCost(pl.Callback):
    """Counts training batch `at` (after the first, not a log step) into `count` (a `StepCount`): its FLOPs
    (matmuls, convolutions and attention, forward and backward, by torch's FlopCounterMode), its aten operators
    and those that are not views (on a GPU each launches at least one kernel). Written to `<out_dir>/cost.json`
    by rank 0 (its share of the targets, with several processes) when `out_dir` is given."""

    def __init__(self, out_dir: str | Path | None = None, at: int = 1):
        self.out_dir, self.at = out_dir, at
        self.count = StepCount()
        self._modes: tuple = ()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.at:
            self._modes = (FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION), _Operators())
            for mode in self._modes:
                mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx != self.at or not self._modes:
            return
        flops, operators = self._leave()
        self.count = StepCount(flops.get_total_flops(), operators.ops, operators.kernels)
        if self.out_dir is not None and trainer.is_global_zero:
            record = {"step": self.at, **asdict(self.count), "steps": trainer.max_steps}
            (Path(self.out_dir) / COST_FILE).write_text(json.dumps(record, indent=1) + "\n")

    def on_exception(self, trainer, pl_module, exception):
        """A run that fails inside the counted step leaves no counting mode active in the process."""
        self._leave()

    def _leave(self) -> tuple:
        """Exit the counting modes (innermost first) and return them."""
        modes, self._modes = self._modes, ()
        for mode in reversed(modes):
            mode.__exit__(None, None, None)
        return modes
