"""What a run leaves in its folder: PNGs, the grid, metrics.json."""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path

import torch

from repinv.naming import slug
from repinv.reporting.figures import save_png, titled_grid

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.txt"  # a failed job's error, for the sweep summary
FINISHED = "finished"  # a record's status when its run made every step (else interrupted, crashed, aborted, missing)
INTERRUPTED = "interrupted"
PROCESS = "process"  # the process (rank) whose share a record came from, after a crash with several processes


def read_records(folder: str | Path) -> list[dict]:
    """The records of a run folder's metrics.json."""
    return json.loads((Path(folder) / METRICS_FILE).read_text())


def all_finished(folder: str | Path) -> bool:
    """Whether `folder`'s metrics.json exists and every record in it finished."""
    return (Path(folder) / METRICS_FILE).is_file() and all(r.get("status") == FINISHED for r in read_records(folder))


def target_png(out_dir: str | Path, image: str) -> Path:
    """Where a run folder keeps the target photograph `image` (the grid's first column)."""
    return Path(out_dir) / "targets" / f"{slug(image)}.png"


def cell_title(column: str, caption: str) -> str:
    """A grid cell's title: its column, then its caption (a record's headline metric, or why it has none)."""
    return f"{column} · {caption}"


def png_name(record: dict) -> str:
    parts = [record.get("image"), record["column"]]
    return "__".join(slug(p) for p in parts if p is not None) + ".png"


def finite_or_none(value):
    """`value`, or None for a non-finite float: metrics.json holds null there, as JSON has no NaN or infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, payload) -> None:
    """Write `payload` beside `path`, then rename it there: a reader sees the old file or the new one, never a part.
    The temporary name is the writer's own, so processes writing one file at once cannot write into each other's."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str, allow_nan=False))
    os.replace(tmp, path)


def _write_pngs(out: Path, records: list[dict], images: torch.Tensor) -> list[dict]:
    """One PNG per record under reconstructions/; the records with non-finite numbers as None and their PNG's path."""
    records = [{k: finite_or_none(v) for k, v in r.items()} for r in records]
    for record, img in zip(records, images):
        record["png"] = str((out / "reconstructions" / png_name(record)).relative_to(out))
        save_png(img, out / record["png"])
    return records


def share_file(rank: int) -> str:
    """The metrics file of one process's share of the targets, written when a run on several processes crashes."""
    return f"metrics.rank{rank}.json"


def write_share(out_dir: str | Path, records: list[dict], images: torch.Tensor, rank: int) -> list[dict]:
    """One process's share after a crash, without waiting for the others: its PNGs and `share_file(rank)`."""
    out = Path(out_dir)
    records = _write_pngs(out, records, images)
    write_json_atomic(out / share_file(rank), records)
    return records


def _written_shares(out: Path, world: int) -> set[int]:
    """The ranks whose share file is in the run folder `out`."""
    return {rank for rank in range(world) if (out / share_file(rank)).is_file()}


def merge_shares(out_dir: str | Path, shares: list[list[dict]]) -> list[dict]:
    """metrics.json from every process's share file on disk; `shares[k]` are rank k's targets (identity fields),
    written as `status: missing` when rank k left no file. Returns the merged records.

    Every process merges after writing its share, in whatever order they get there. Each writes again while the
    share files on disk differ from those it read: the last metrics.json written holds every share written before it.
    """
    out = Path(out_dir)
    while True:
        found, records = _written_shares(out, len(shares)), []
        for rank, targets in enumerate(shares):
            records += (json.loads((out / share_file(rank)).read_text()) if rank in found
                        else [{**t, "status": "missing", PROCESS: rank} for t in targets])
        write_json_atomic(out / METRICS_FILE, records)
        if _written_shares(out, len(shares)) == found:
            return records


def write_results(
    out_dir: str | Path,
    records: list[dict],
    images: torch.Tensor,
    references: dict[str, torch.Tensor] | None = None,
    title: str | None = None,
) -> list[dict]:
    """Write one PNG per record, a grid (target first, then each record's column and caption), metrics.json.

    Each record carries its objective's `column` and `caption` (`Objective.finalize`). Returns the
    records as written (non-finite numbers as None, each with its PNG's path).
    """
    out = Path(out_dir)
    records = _write_pngs(out, records, images)
    references = references or {}
    for name, ref in references.items():
        save_png(ref, target_png(out, name))
    rows, labels = [], []
    for name in dict.fromkeys(r.get("image") for r in records):
        row = [(references[name], "target")] if name in references else []
        for record, img in zip(records, images):
            if record.get("image") == name:
                row.append((img, cell_title(record["column"], record["caption"])))
        rows.append(row)
        labels.append(str(name) if name is not None else "")
    titled_grid(rows, out / "grid.png", row_labels=labels, suptitle=title)
    write_json_atomic(out / METRICS_FILE, records)
    return records
