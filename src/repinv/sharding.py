"""Split one run's targets across processes: each rank optimises its own share, nothing is averaged.

The image batch is the parameter and every target's gradient is its own, so data parallelism
here means disjoint shards, not gradient averaging. Lightning's DDP strategy starts the
processes and the process group; `ShardedDDP` leaves the module unwrapped so no gradient or
buffer is ever synchronised, and rank 0 gathers the results with `gather`.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy

from repinv.errors import RepinvError


class ShardedDDP(DDPStrategy):
    """DDP processes without the DistributedDataParallel wrapper (which would average the image's
    gradients across ranks and broadcast rank 0's per-target buffers over everyone else's)."""

    strategy_name = "repinv_sharded"

    def __init__(self, *args, timeout_s: float = 600, **kwargs):
        # c10d waits 30 minutes for a missing rank by default: fail sooner
        super().__init__(*args, timeout=timedelta(seconds=timeout_s), **kwargs)

    def configure_ddp(self) -> None:
        """Keep the LightningModule as it is: no wrapper, no gradient hooks."""


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


def take_shard(module, rank: int, world: int) -> list[int]:
    """Cut an `ImageOptimization`'s per-target state to `rank`'s share; returns that share's target indices.

    The objective keeps only its targets, the image parametrisation and the divergence state only their rows;
    the module's `records` stay whole, so gathered results are in the original target order.
    """
    start, stop = shard_bounds(len(module.records), rank, world)
    shard = list(range(start, stop))
    module.objective.shard(shard)
    module.image_param.take_rows(start, stop)
    module.divergence.shard(start, stop)
    return shard


def gather(items: list) -> list:
    """Concatenate every rank's list in rank order (any picklable items; uneven lengths are fine)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def gather_tensor(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0 (on the CPU; shards may differ in length)."""
    parts = gather([x.detach().cpu()])
    return torch.cat(parts) if len(parts) > 1 else parts[0]
