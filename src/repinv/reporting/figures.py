"""Pictures a person looks at: single PNGs, titled grids and a model's input filters."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from repinv.models.sources import for_net  # noqa: E402


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] -> H×W×3 uint8 (W&B casts floats straight to uint8, so convert first)."""
    return img.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def save_png(img: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(img)).save(path)
    return path


LABEL_SIZE = 8  # points, of the titles and row labels


def row_label(text: str, height: float) -> str:
    """`text` wrapped into lines that fit along a row `height` inches tall (a row label runs up the row's side)."""
    chars = max(8, int(height * 72 / (0.62 * LABEL_SIZE)))  # a character is at most about 0.62 em wide
    return textwrap.fill(text, chars)


def grid_figure(
    rows: Sequence[Sequence[tuple[np.ndarray | torch.Tensor | None, str]]],
    row_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
    cell: float = 2.2,
):
    """A grid of images, each with its title, and each row's label wrapped to the row's height; None leaves a blank
    cell."""
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
            ax.set_title(title, fontsize=LABEL_SIZE)
        if row_labels:
            axes[r][0].set_ylabel(row_label(row_labels[r], 0.8 * cell), fontsize=LABEL_SIZE)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def titled_grid(
    rows: Sequence[Sequence[tuple[np.ndarray | torch.Tensor | None, str]]],
    path: str | Path,
    row_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
    cell: float = 2.2,
) -> Path:
    """`grid_figure` saved as PNG."""
    fig = grid_figure(rows, row_labels, suptitle, cell)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def input_conv(net: torch.nn.Module) -> tuple[str, torch.nn.Conv2d] | None:
    """The first convolution that takes the image, with its path, as the net's model source finds it; None if there is none."""
    return for_net(net).input_conv(net)


def input_filters(net: torch.nn.Module) -> torch.Tensor | None:
    """The image's first filters [N, 3, k, k] (see `input_conv`), or None."""
    found = input_conv(net)
    return None if found is None else found[1].weight.detach().float().cpu().clone()


def minmax(filters: torch.Tensor) -> torch.Tensor:
    """Each filter scaled to [0, 1] on its own (a constant filter becomes 0)."""
    flat = filters.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(filters)


def grid_layout(count: int, kernel: int) -> tuple[int, int, int]:
    """Columns, rows and the pixel scale of `filter_grid` (cells of about 32 px)."""
    cols = math.ceil(math.sqrt(count))
    return cols, math.ceil(count / cols), max(1, 32 // kernel)


def filter_grid(filters: torch.Tensor, path: str | Path) -> Path:
    """PNG of `filters` [N, 3, k, k] as a near-square grid, each filter min-max normalised and
    enlarged to about 32 px (nearest neighbour), on a black background with 1-px gaps."""
    n, _, kh, kw = filters.shape
    cols, rows, scale = grid_layout(n, max(kh, kw))
    cells = minmax(filters).repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    ch, cw = kh * scale, kw * scale
    canvas = torch.zeros(3, rows * (ch + 1) + 1, cols * (cw + 1) + 1)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        canvas[:, 1 + r * (ch + 1) : 1 + r * (ch + 1) + ch, 1 + c * (cw + 1) : 1 + c * (cw + 1) + cw] = cell
    return save_png(canvas, path)


def filter_stats(filters: torch.Tensor) -> dict[str, float | int]:
    """Numbers for a filter figure: how many, their size, and how smooth they are.

    `neighbour_corr` is the mean correlation of horizontally and vertically adjacent weights;
    noise (an untrained filter) gives about 0, smooth patterns such as wavelets a clearly positive
    value. `structured` is the fraction of filters whose correlation exceeds 0.5.
    """
    centred = filters - filters.mean(dim=(1, 2, 3), keepdim=True)
    pairs = [(centred[..., :, 1:], centred[..., :, :-1]), (centred[..., 1:, :], centred[..., :-1, :])]
    corr = torch.stack([
        (a * b).flatten(1).sum(1) / (a.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1)).clamp_min(1e-12)
        for a, b in pairs
    ]).mean(0)
    return {"filters": filters.shape[0], "kernel": filters.shape[-1],
            "neighbour_corr": round(corr.mean().item(), 4), "structured": round((corr > 0.5).float().mean().item(), 4)}
