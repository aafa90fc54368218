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


def column_name(record: dict) -> str:
    """What a reconstruction shows: its layer, or its class."""
    return str(record.get("layer", record.get("class_name", record.get("class", "?"))))


def png_name(record: dict) -> str:
    parts = [record.get("image"), column_name(record)]
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
) -> tuple[list[dict], dict[str, Path]]:
    """Write one PNG per record, a grid (target first, then each record with its PSNR), metrics.json.

    Returns the records as written (non-finite numbers as None, each with its PNG's path) and
    the paths of the grid and metrics file.
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
                metric = f"{record['psnr']:.1f} dB" if record.get("psnr") is not None else f"p={record.get('prob', float('nan')):.2f}"
                row.append((img, f"{column_name(record)} · {metric}"))
        rows.append(row)
        labels.append(str(name) if name is not None else "")
    paths = {"grid": titled_grid(rows, out / "grid.png", row_labels=labels, suptitle=title)}
    paths["metrics"] = out / METRICS_FILE
    write_json_atomic(paths["metrics"], records)
    return records, paths
