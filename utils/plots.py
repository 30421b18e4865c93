"""Figures every family shares: sample grids, progressions over epochs, labelled grids, curves."""
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from utils.data import to_uint8  # noqa: E402

MAX_COLUMNS = 12  # progression figures show at most this many epochs, evenly spaced
_PIXELS_PER_INCH = 40  # image cells keep a readable size without huge files


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.cpu() if images.dtype == torch.uint8 else to_uint8(images.cpu())


def grid_array(images: torch.Tensor, nrow: int, padding: int = 2) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] or uint8 -> one (H', W', 3) uint8 mosaic, nrow images per row."""
    grid = make_grid(_as_uint8(images), nrow=nrow, padding=padding, pad_value=255)
    return grid.permute(1, 2, 0).numpy()


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8, title: str | None = None) -> Path:
    """A plain grid of images with an optional title."""
    array = grid_array(images, nrow)
    scale = max(1.0, 256 / max(array.shape[:2]))  # small grids are drawn larger
    fig = plt.figure(figsize=(array.shape[1] * scale / _PIXELS_PER_INCH / 2 + 0.5,
                              array.shape[0] * scale / _PIXELS_PER_INCH / 2 + 0.8))
    plt.imshow(array, interpolation="nearest")
    plt.axis("off")
    if title:
        plt.title(title)
    return _save(fig, path)


def save_labelled_grid(rows: torch.Tensor, path: Path, row_labels: Sequence[str] = (),
                       col_labels: Sequence[str] = (), title: str | None = None,
                       xlabel: str | None = None) -> Path:
    """rows (R, K, C, H, W): a grid with a label per row and per column."""
    n_rows, n_cols = rows.shape[:2]
    height, width = rows.shape[-2:]
    pad = 2
    array = grid_array(rows.flatten(0, 1), nrow=n_cols, padding=pad)
    cell = max(0.5, 48 / max(height, width)) * max(height, width) / _PIXELS_PER_INCH
    left = 1.8 if row_labels else 0.2
    fig, ax = plt.subplots(figsize=(n_cols * cell + left, n_rows * cell + 1.0))
    ax.imshow(array, interpolation="nearest")
    step_x, step_y = width + pad, height + pad
    ax.set_xticks([pad + step_x * i + width / 2 for i in range(n_cols)] if col_labels else [])
    ax.set_xticklabels(list(col_labels), fontsize=8)
    ax.set_yticks([pad + step_y * i + height / 2 for i in range(n_rows)] if row_labels else [])
    ax.set_yticklabels(list(row_labels), fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if xlabel:
        ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def pick_columns(n: int, max_columns: int = MAX_COLUMNS) -> list[int]:
    """Up to max_columns indices spread evenly over range(n), first and last always included."""
    if n <= max_columns:
        return list(range(n))
    return sorted({round(i * (n - 1) / (max_columns - 1)) for i in range(max_columns)})


def save_progression(frames: Sequence[torch.Tensor], epochs: Sequence[int], path: Path,
                     title: str = "Fixed inputs across training") -> Path:
    """Rows: fixed latents (or noise); columns: epochs (evenly thinned to bound the width)."""
    cols = pick_columns(len(frames))
    rows = torch.stack([_as_uint8(frames[c]) for c in cols], dim=1)  # (R, K, C, H, W)
    return save_labelled_grid(rows, path, col_labels=[f"ep {epochs[c]}" for c in cols],
                              row_labels=[f"z{i}" for i in range(rows.shape[0])],
                              title=title, xlabel="epoch")


def save_curves(records: Sequence[dict], panels: Sequence[tuple[str, Sequence[str]]], path: Path,
                log_y: Sequence[str] = (), title: str | None = None) -> Path:
    """One panel per (title, keys); each key is a line over epochs. Missing keys are skipped."""
    n = len(panels)
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.6 * cols,
                             3.4 * ((n + cols - 1) // cols)), squeeze=False)
    epochs = [r["epoch"] for r in records]
    for ax, (panel_title, keys) in zip(axes.flat, panels):
        for key in keys:
            values = [r.get(key) for r in records]
            if all(v is None for v in values):
                continue
            style = "--" if key.startswith("test") else "-"
            ax.plot(epochs, [np.nan if v is None else v for v in values], style, marker=".",
                    label=key)
        ax.set_title(panel_title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
        if panel_title in log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
