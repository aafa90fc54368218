"""Split one run's targets across processes: each rank optimises its own share, nothing is averaged.

The image batch is the parameter and every target's gradient is its own, so data parallelism
here means disjoint shards, not gradient averaging. Lightning's DDP strategy starts the
processes and the process group; `ShardedDDP` leaves the module unwrapped so no gradient or
buffer is ever synchronised, and rank 0 gathers the results with `gather`. Checkpoints hold the
whole batch in target order, as a one-process run's do (`gather_rows` when saving, `take_checkpoint_rows`
when loading), so a run resumes on any number of processes.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Protocol

import torch
import torch.distributed as dist
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.accelerators import AcceleratorRegistry
from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry
from pytorch_lightning.trainer.connectors.accelerator_connector import _AcceleratorConnector
from torch import nn

from repinv.engine.plugins import located
from repinv.errors import RepinvError, RunAborted, listing

log = logging.getLogger(__name__)


class ShardedDDP(DDPStrategy):
    """DDP processes without the DistributedDataParallel wrapper (which would average the image's
    gradients across ranks and broadcast rank 0's per-target buffers over everyone else's)."""

    strategy_name = "repinv_sharded"

    def __init__(self, *args, timeout_s: float = 600, **kwargs):
        # c10d waits 30 minutes for a missing rank by default: fail sooner
        super().__init__(*args, timeout=timedelta(seconds=timeout_s), **kwargs)

    def configure_ddp(self) -> None:
        """Keep the LightningModule as it is: no wrapper, no gradient hooks."""

    def setup_distributed(self) -> None:
        """The process group, and beside it a gloo group over the same processes for the host-side collectives."""
        try:
            super().setup_distributed()
        except dist.DistError as err:
            raise CollectiveFailed(
                f"process {self.global_rank} of {self.world_size}: the run's processes did not all join within "
                f"collective_timeout_s={self._timeout.total_seconds():g} s ({err}). Start them together, or give a "
                f"loaded machine longer, e.g. collective_timeout_s=600.") from err
        _HOST.clear()
        if dist.get_backend() != "gloo":
            _HOST["group"] = dist.new_group(backend="gloo", timeout=self._timeout)

    def teardown(self) -> None:
        _HOST.clear()
        super().teardown()

    def await_started(self) -> None:
        """In the launching process, after a failure: wait for the processes it started (each gives up within the
        collective timeout, then writes and merges its share), so that when the command returns metrics.json holds
        every share. Its process group closes first: a process waiting on this one in a collective gives up at once.
        The processes leave the launcher's list first, which Lightning's observer thread watches: it would SIGKILL this
        process once one of them ends with an error code (as each does after the failure) before this one exits."""
        listed = getattr(self.launcher, "procs", [])
        procs = list(listed)
        listed.clear()
        if procs and dist.is_initialized():
            _HOST.clear()
            dist.destroy_process_group()
        for proc in procs:
            try:
                proc.wait(timeout=self._timeout.total_seconds() + 60)
            except subprocess.TimeoutExpired:
                log.warning("process %d still runs; metrics.json may lack its share until it ends", proc.pid)


# The group `any_rank` and `gather` use: gloo over the run's processes when the process group is
# NCCL's. Their values live on the host, so a collective needs no device copy and no stream sync,
# and gloo raises when a peer died, where NCCL would block until its watchdog kills the process.
_HOST: dict = {}


def host_group():
    """The process group for host-side collectives (None: the default one, already gloo)."""
    return _HOST.get("group")


def shard_bounds(total: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous slice [start, stop) of `total` targets that `rank` of `world` optimises.

    Shards differ by at most one target and, taken in rank order, restore the original order.
    """
    if world > total:
        raise RepinvError(
            f"the run has {total} target(s) but {world} processes (trainer.devices x trainer.num_nodes); "
            f"every process needs at least one target: use at most {total} devices, or more layers/images."
        )
    size, extra = divmod(total, world)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


class Rows(Protocol):
    """A per-target part of a run (the objective, the image parametrisation, the divergence state): it keeps
    only the targets [start, stop) of this process, so its per-target state has that many rows."""

    def take_rows(self, start: int, stop: int) -> None: ...


def take_shard(parts: Mapping[str, nn.Module], total: int, rank: int, world: int) -> tuple[list[int], list[str]]:
    """Cut each per-target part (name in the module -> part) to `rank`'s share of `total` targets.

    Returns that share's target indices and the names of the state `take_shard` cut (what
    checkpoints gather and split by rows, see `gather_rows`).
    """
    start, stop = shard_bounds(total, rank, world)
    cut = []
    for name, part in parts.items():
        before = _shapes(part, name)
        part.take_rows(start, stop)
        cut += [k for k, shape in _shapes(part, name).items() if k in before and shape != before[k]]
    return list(range(start, stop)), sorted({k.rsplit(".", 1)[0] for k in cut})


def _shapes(part: nn.Module, name: str) -> dict:
    return {k: getattr(v, "shape", None) for k, v in part.state_dict(prefix=f"{name}.").items()}


def _row_tensors(checkpoint: dict, prefixes: list[str], rows: int) -> list[tuple[dict, object]]:
    """Where the per-target tensors of a checkpoint lie (container, key), in a fixed order.

    Per target: tensors with `rows` rows in the state of what `take_shard` cut (`prefixes`,
    extra states included) and in the optimisers' per-parameter state (only image parameters
    are optimised).
    """
    found: list[tuple[dict, object]] = []

    def visit(container, key):
        value = container[key]
        if isinstance(value, dict):  # a copy: an optimiser's state_dict shares its per-parameter dicts with it
            value = container[key] = dict(value)
            for k in list(value):
                visit(value, k)
        elif isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows:
            found.append((container, key))

    state = checkpoint.get("state_dict", {})
    for key in list(state):
        if any(key == p or key.startswith(p + ".") for p in prefixes):
            visit(state, key)
    for opt in checkpoint.get("optimizer_states", []):
        if "state" in opt:
            opt["state"] = dict(opt["state"])
            for key in list(opt["state"]):
                visit(opt["state"], key)
    return found


def gather_rows(checkpoint: dict, prefixes: list[str], rows: int) -> None:
    """Replace this rank's per-target checkpoint tensors (`rows` each) by every rank's, in target order (collective)."""
    found = _row_tensors(checkpoint, prefixes, rows)
    parts = gather([[c[k].detach().cpu() for c, k in found]])
    for i, (c, k) in enumerate(found):
        c[k] = torch.cat([part[i] for part in parts])


def take_checkpoint_rows(checkpoint: dict, prefixes: list[str], total: int, start: int, stop: int) -> None:
    """Cut a whole-batch checkpoint's per-target tensors (`total` rows) to this rank's rows [start, stop)."""
    for c, k in _row_tensors(checkpoint, prefixes, total):
        c[k] = c[k][start:stop].clone()


def any_rank(value: int) -> int:
    """The largest of every rank's `value` (collective; `value` itself on one process): e.g. a stop flag.

    Reduced on the host (see `host_group`): no device synchronisation, and a dead rank is an error
    (`CollectiveFailed`) on every backend, not a hang.
    """
    if not _several():
        return value
    flag = torch.tensor([value], dtype=torch.int64)
    with collective():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=host_group())
        return int(flag.item())


class CollectiveFailed(RunAborted):
    """A collective between the processes failed: another process crashed, left, or hung past the timeout."""


@contextmanager
def collective():
    """Raise `CollectiveFailed` for any failure of the collective inside (gloo raises plain RuntimeErrors)."""
    try:
        yield
    except (RuntimeError, dist.DistError) as err:
        rank = f"process {dist.get_rank()} of {dist.get_world_size()}: " if dist.is_initialized() else ""
        raise CollectiveFailed(f"{rank}a collective between the processes failed: another process crashed, left, or did "
                               f"not answer within collective_timeout_s ({err})") from err


def _several() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather(items: list) -> list:
    """Concatenate every rank's list in rank order (any picklable items; uneven lengths are fine)."""
    if not _several():
        return items
    out: list = [None] * dist.get_world_size()
    with collective():
        dist.all_gather_object(out, items, group=host_group())
    return [x for part in out for x in part]


def gather_tensor(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0 (on the CPU; shards may differ in length)."""
    parts = gather([x.detach().cpu()])
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def accelerator_name(accelerator) -> str:
    """The accelerator Lightning runs for `trainer.accelerator` ("auto" and "gpu" chosen by availability)."""
    name = str(accelerator)
    try:
        if name in ("auto", "gpu"):
            name = (_AcceleratorConnector._choose_auto_accelerator() if name == "auto"
                    else _AcceleratorConnector._choose_gpu_accelerator_backend())
    except MisconfigurationException as err:
        raise RepinvError(f"trainer.accelerator={accelerator} cannot be used here ({err}). Use trainer.accelerator=auto "
                          "(a GPU where there is one, else the CPU) or cpu.") from None
    if name not in AcceleratorRegistry:
        raise RepinvError(f"trainer.accelerator={accelerator}: there is no such accelerator. Use auto, cpu or gpu "
                          f"(Lightning knows {listing(sorted(AcceleratorRegistry))}).")
    return name


def process_count(accelerator, devices, num_nodes: int = 1) -> int:
    """How many processes Lightning starts for these Trainer arguments (devices -1, "auto", "2", lists).

    Resolved as Lightning does: the accelerator ("auto", "gpu" chosen by availability) parses
    the devices flag into its parallel devices; times the number of nodes.
    """
    try:
        acc = AcceleratorRegistry[accelerator_name(accelerator)]["accelerator"]
        flag = acc.auto_device_count() if devices == "auto" else devices
        return len(acc.get_parallel_devices(acc.parse_devices(flag))) * int(num_nodes)
    except (MisconfigurationException, TypeError, ValueError) as err:
        raise RepinvError(
            f"trainer.accelerator={accelerator} trainer.devices={devices} cannot be used here ({err}). Give "
            "trainer.devices=N (processes on this machine; on CPUs any N >= 1), trainer.devices=auto or, for GPUs, "
            "trainer.devices=-1 for all of them, with trainer.accelerator=auto, cpu or gpu."
        ) from None


SHARDABLE = sorted(k for k in StrategyRegistry if StrategyRegistry[k]["strategy"] is DDPStrategy)


def sharded_strategy(strategy, timeout_s: float = 600) -> ShardedDDP | None:
    """The strategy for a run on several processes: `ShardedDDP`, keeping a DDP strategy's settings.

    "auto" and Lightning's DDP strategies that start the processes as `ddp` does (see `popen_settings`)
    become `ShardedDDP` with `timeout_s` (how long a collective waits for a rank that crashed or hangs);
    a config node building `ShardedDDP` itself is kept (None: nothing to replace). Any other strategy would wrap or
    shard the image and average its gradients, so it is refused.
    """
    if strategy in (None, "auto"):
        return ShardedDDP(timeout_s=timeout_s)
    if isinstance(strategy, ShardedDDP):
        return strategy
    if isinstance(strategy, str) and strategy in SHARDABLE:
        return ShardedDDP(timeout_s=timeout_s, **popen_settings(strategy, StrategyRegistry[strategy]["init_params"]))
    if isinstance(strategy, Mapping) and "_target_" in strategy:
        cls = located("trainer.strategy", strategy)
        if isinstance(cls, type) and issubclass(cls, ShardedDDP):
            popen_settings(strategy, strategy)
            return None
        if cls is DDPStrategy:
            settings = popen_settings(strategy, {k: v for k, v in strategy.items() if k != "_target_"})
            if "timeout" in settings:
                raise RepinvError(f"trainer.strategy.timeout={settings['timeout']}: how long a collective waits for "
                                  "the other processes is collective_timeout_s (seconds), e.g. collective_timeout_s=600.")
            return ShardedDDP(timeout_s=timeout_s, **settings)
    raise RepinvError(
        f"trainer.strategy={strategy} with several processes: repinv splits the targets across the processes, "
        "each optimising its own share, and that strategy would synchronise or shard the image and average its "
        "gradients across processes (wrong results). Use trainer.strategy=auto or ddp, which run as "
        "repinv.engine.sharding.ShardedDDP, or trainer.devices=1."
    )


POPEN = "popen"  # the start method of `ddp`: the launching process runs rank 0, the others run the command again


def popen_settings(strategy, settings: Mapping) -> dict:
    """A DDP strategy's `settings`, refused unless it starts the processes as `ddp` does: with spawn or fork the
    launching process takes no part, and Lightning then loads rank 0's share into its whole batch and fails."""
    method = settings.get("start_method", POPEN)
    if method != POPEN:
        given = f"trainer.strategy={strategy}" if isinstance(strategy, str) else f"trainer.strategy.start_method={method}"
        raise RepinvError(
            f"{given} starts the processes by {method}, and the launching process then takes no part in the run: "
            "Lightning loads rank 0's share of the image into its whole batch, which fails and overwrites the written "
            "results with its untrained images. Use trainer.strategy=auto or ddp (the launching process runs rank 0 and "
            "starts the others by running the command again; in sweeps, hydra/launcher=slurm), or trainer.devices=1."
        )
    return dict(settings)
