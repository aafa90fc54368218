"""What a run leaves in its folder: PNGs, the grid, metrics.json."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch

from repinv.figures import save_png, titled_grid

METRICS_FILE = "metrics.json"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "x"


def png_name(record: dict) -> str:
    parts = [record.get("image"), record["column"]]
    return "__".join(slug(p) for p in parts if p is not None) + ".png"


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, payload) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str, allow_nan=False))
    os.replace(tmp, path)


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
    recon_dir = out / "reconstructions"
    records = [{k: _clean(v) for k, v in r.items()} for r in records]
    for record, img in zip(records, images):
        record["png"] = str((recon_dir / png_name(record)).relative_to(out))
        save_png(img, out / record["png"])
    references = references or {}
    for name, ref in references.items():
        save_png(ref, out / "targets" / f"{slug(name)}.png")
    rows, labels = [], []
    for name in dict.fromkeys(r.get("image") for r in records):
        row = [(references[name], "target")] if name in references else []
        for record, img in zip(records, images):
            if record.get("image") == name:
                row.append((img, f"{record['column']} · {record['caption']}"))
        rows.append(row)
        labels.append(str(name) if name is not None else "")
    titled_grid(rows, out / "grid.png", row_labels=labels, suptitle=title)
    write_json_atomic(out / METRICS_FILE, records)
    return records
