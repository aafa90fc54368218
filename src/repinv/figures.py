"""Pictures a person looks at: single PNGs and titled grids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> H×W×3 uint8 (W&B casts floats straight to uint8, so convert first)."""
    return img.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def save_png(img: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(img)).save(path)
    return path


def titled_grid(
    rows: Sequence[Sequence[tuple[np.ndarray | torch.Tensor | None, str]]],
    path: str | Path,
    row_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
    cell: float = 2.2,
) -> Path:
    """A grid of images, each with its title; None leaves a blank cell. Saved as PNG."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows + (0.4 if suptitle else 0)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c >= len(row) or row[c][0] is None:
                continue
            img, title = row[c]
            ax.imshow(to_uint8(img) if isinstance(img, torch.Tensor) else img, cmap="gray" if np.ndim(img) == 2 else None)
            ax.set_title(title, fontsize=8)
        if row_labels:
            axes[r][0].set_ylabel(row_labels[r], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
