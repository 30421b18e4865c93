"""Figures every family shares: sample grids, progressions over epochs, labelled grids, curves."""
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from utils import distributed, files  # noqa: E402
from utils.data import to_uint8  # noqa: E402

MAX_COLUMNS = 12  # progression figures show at most this many epochs, evenly spaced
_PIXELS_PER_INCH = 40  # image cells keep a readable size without huge files


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.cpu() if images.dtype == torch.uint8 else to_uint8(images.cpu())


def tile(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: int = 0) -> torch.Tensor:
    """(N, C, H, W) -> one (C, H', W') mosaic, nrow images per row, each framed by `padding`
    pixels of pad_value (grey images become RGB). Written here rather than taken from
    torchvision, whose import would add about 2 s to every script's start."""
    n, channels, height, width = images.shape
    if channels == 1:
        images = images.expand(-1, 3, -1, -1)
    columns = min(nrow, n)
    rows = -(-n // columns)
    cell_h, cell_w = height + padding, width + padding
    grid = images.new_full((images.shape[1], rows * cell_h + padding, columns * cell_w + padding),
                           pad_value)
    for k, image in enumerate(images):
        top, left = (k // columns) * cell_h + padding, (k % columns) * cell_w + padding
        grid[:, top:top + height, left:left + width] = image
    return grid


def grid_array(images: torch.Tensor, nrow: int, padding: int = 2) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] or uint8 -> one (H', W', 3) uint8 mosaic, nrow images per row."""
    return tile(_as_uint8(images), nrow, padding, pad_value=255).permute(1, 2, 0).numpy()


def _save(fig, path: Path) -> Path:
    """Save and close a figure (under torchrun rank 0 alone writes)."""
    path = Path(path)
    if distributed.is_main():
        with files.atomic_open(path) as handle:
            fig.savefig(handle, format=path.suffix.lstrip(".") or "png", dpi=100,
                        bbox_inches="tight")
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


def save_progression(frames: Sequence[torch.Tensor], path: Path,
                     title: str = "Fixed inputs across training",
                     row_labels: Sequence[str] = ()) -> Path:
    """Rows: fixed latents (or noise); columns: epochs (frames[k] is epoch k + 1, evenly
    thinned to bound the width)."""
    cols = pick_columns(len(frames))
    rows = torch.stack([_as_uint8(frames[c]) for c in cols], dim=1)  # (R, K, C, H, W)
    return save_labelled_grid(rows, path, col_labels=[f"ep {c + 1}" for c in cols],
                              row_labels=list(row_labels) or [f"z{i}" for i in
                                                              range(rows.shape[0])],
                              title=title, xlabel="epoch")


def plot_panel(ax, records: Sequence[dict], keys: Sequence[str], title: str, log: bool = False,
               prefix: str = "", color=None) -> None:
    """Each key of the per-epoch records as a line (test keys dashed); missing keys skipped."""
    epochs = [r["epoch"] for r in records]
    for key in keys:
        values = [r.get(key) for r in records]
        if all(v is None for v in values):
            continue
        style = "--" if key.startswith("test") else "-"
        ax.plot(epochs, [np.nan if v is None else v for v in values], style, marker=".",
                label=f"{prefix}{key}", color=color)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)


def _panel_grid(n: int, max_cols: int, panel_size: tuple[float, float]):
    """A figure with n panels in rows of at most max_cols; (fig, 2-d array of axes)."""
    cols = min(n, max_cols)
    rows = (n + cols - 1) // cols
    return plt.subplots(rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows),
                        squeeze=False)


def _finish(fig, axes, n: int, path: Path, title: str | None) -> Path:
    """Hide the unused panels after the first n, add the title, lay out and save."""
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def save_curves(records: Sequence[dict], panels: Sequence[tuple[str, Sequence[str]]], path: Path,
                log_y: Sequence[str] = (), title: str | None = None) -> Path:
    """One panel per (title, keys); each key is a line over epochs. Missing keys are skipped."""
    fig, axes = _panel_grid(len(panels), 3, (4.6, 3.4))
    for ax, (panel_title, keys) in zip(axes.flat, panels):
        plot_panel(ax, records, keys, panel_title, panel_title in log_y)
    return _finish(fig, axes, len(panels), path, title)


def save_run_curves(runs: dict[str, Sequence[dict]], panels: Sequence[tuple[str, Sequence[str]]],
                    path: Path, log_y: Sequence[str] = (), title: str | None = None,
                    overlay: bool = False) -> Path:
    """Several runs' curves: a row per run, or (overlay) one row with a colour per run."""
    rows = 1 if overlay else len(runs)
    fig, axes = plt.subplots(rows, len(panels), figsize=(3.6 * len(panels), 3.0 * rows),
                             squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, (name, records) in enumerate(runs.items()):
        for ax, (panel_title, keys) in zip(axes[0 if overlay else r], panels):
            plot_panel(ax, records, keys, panel_title, panel_title in log_y,
                       prefix=f"{name}: " if overlay else "",
                       color=colours[r % len(colours)] if overlay else None)
        if not overlay:
            axes[r, 0].set_ylabel(name, fontsize=9)
    return _finish(fig, axes, axes.size, path, title)


def save_strips_with_curves(strips: dict[str, torch.Tensor], col_labels: Sequence[str],
                            curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
                            curve_ylabel: str, marks: Sequence[float] = (),
                            title: str | None = None) -> Path:
    """Image strips (name -> (K, C, H, W)) stacked on the left, their curves on one axis right.

    `marks` are x positions drawn as vertical lines on the curve panel (the strip's columns).
    """
    n = len(strips)
    fig = plt.figure(figsize=(16, 1.9 * n + 1.2))
    grid = fig.add_gridspec(n, 2, width_ratios=(2.6, 1))
    for i, (name, images) in enumerate(strips.items()):
        ax = fig.add_subplot(grid[i, 0])
        ax.imshow(grid_array(images, nrow=len(images)), interpolation="nearest")
        height, width = images.shape[-2:]
        ax.set_xticks([2 + (width + 2) * k + width / 2 for k in range(len(images))])
        ax.set_xticklabels(list(col_labels), fontsize=8)
        ax.set_yticks([])
        ax.set_ylabel(name)
        ax.tick_params(length=0)
    ax = fig.add_subplot(grid[:, 1])
    for name, (x, y) in curves.items():
        ax.plot(x, y, label=name)
    for x in marks:
        ax.axvline(x, color="grey", alpha=0.3, linewidth=0.8)
    ax.set_xlabel("t")
    ax.set_ylabel(curve_ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def save_latent_histogram(z: torch.Tensor, path: Path, title: str | None = None) -> Path:
    """Histogram of scaled latents (N, C, H, W) per channel against the N(0, 1) density."""
    channels = z.shape[1]
    fig, axes = plt.subplots(1, channels, figsize=(3.2 * channels, 2.8), squeeze=False)
    grid = np.linspace(-4, 4, 200)
    normal = np.exp(-grid ** 2 / 2) / np.sqrt(2 * np.pi)
    for c, ax in enumerate(axes[0]):
        values = z[:, c].flatten().float().numpy()
        ax.hist(values, bins=80, range=(-4, 4), density=True, alpha=0.7,
                label=f"mean {values.mean():.2f}, std {values.std():.2f}")
        ax.plot(grid, normal, "k--", linewidth=1, label="N(0, 1)")
        ax.set_title(f"channel {c}", fontsize=10)
        ax.legend(fontsize=7)
    return _finish(fig, axes, axes.size, path, title)


def save_bar_charts(values: dict[str, dict], panels: Sequence[tuple[str, str]], path: Path,
                    log_y: Sequence[str] = (), fractions: Sequence[str] = (),
                    marks: dict[str, dict] | None = None, title: str | None = None) -> Path:
    """One panel per (key, panel title) with a bar per entry of values ({name: {key: number}});
    a missing or None value is written as "n/a". Panels in `fractions` span 0..1; marks[key][name]
    draws a short dashed line on that bar (e.g. FID's real-vs-real floor)."""
    names = list(values)
    fig, axes = _panel_grid(len(panels), 4, (3.4, 3.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, panel_title) in zip(axes.flat, panels):
        for i, name in enumerate(names):
            value = values[name].get(key)
            if value is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
                continue
            ax.bar(i, value, color=colours[i % len(colours)])
            ax.annotate(f"{value:.3g}", (i, value), ha="center", va="bottom", fontsize=8)
            mark = (marks or {}).get(key, {}).get(name)
            if mark is not None:
                ax.plot([i - 0.4, i + 0.4], [mark, mark], "k--", linewidth=1)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_title(panel_title, fontsize=9)
        if key in log_y:
            ax.set_yscale("log")
        ax.margins(y=0.15)
        if key in fractions:
            ax.set_ylim(0, 1.08)
    return _finish(fig, axes, len(panels), path, title)


def save_heatmap(matrix: np.ndarray, path: Path, row_labels: Sequence[str],
                 col_labels: Sequence[str], title: str | None = None,
                 value_label: str = "") -> Path:
    """A (R, K) matrix of values in [0, 1] as a heat map with each value written in its cell."""
    matrix = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * matrix.shape[1], 0.8 + 0.4 * matrix.shape[0]))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=max(1e-9, matrix.max(initial=0)),
                      aspect="auto")
    for (i, k), value in np.ndenumerate(matrix):
        ax.text(k, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="white" if value < 0.6 * matrix.max(initial=0) else "black")
    ax.set_xticks(range(matrix.shape[1]), list(col_labels), fontsize=8, rotation=30)
    ax.set_yticks(range(matrix.shape[0]), list(row_labels), fontsize=8)
    fig.colorbar(image, ax=ax, label=value_label)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def save_spread_chart(summary: dict[str, dict], panels: Sequence[tuple[str, str]], path: Path,
                      title: str | None = None) -> Path:
    """One panel per score: for every setting (x) the median over seeds as a bar and each seed's
    value as a dot. summary[setting][key] = {"median", "values"}."""
    names = list(summary)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        medians = [summary[n][key]["median"] for n in names]
        ax.bar(range(len(names)), medians, color="#9ecae1")
        for i, n in enumerate(names):
            values = summary[n][key]["values"]
            ax.scatter([i] * len(values), values, s=12, color="#08519c", zorder=3)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def save_hue_histogram(report: dict, path: Path, title: str | None = None) -> Path:
    """The hue histograms of metrics.hue_histograms: a bar per hue sector in that sector's
    colour for the samples, the real images' share as a black step line over it."""
    import colorsys
    bins = report["bins"]
    centres = (np.arange(bins) + 0.5) / bins
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.bar(centres, report["fake"], width=0.9 / bins,
           color=[colorsys.hsv_to_rgb(h, 1.0, 0.9) for h in centres], label="samples")
    ax.step(np.arange(bins + 1) / bins, report["real"] + report["real"][-1:], where="post",
            color="black", linewidth=1.2, label="real")
    ax.set_xlim(0, 1)
    ax.set_xlabel("hue (share of coloured pixels per sector)")
    ax.legend(fontsize=8)
    ax.set_title(title or f"hue: total variation {report['total_variation']:.2f}, coverage "
                          f"{report['coverage']:.2f}", fontsize=9)
    return _save(fig, path)


MAX_CLASS_ROWS = 40  # rows of save_class_rows; with more classes, the most frequent


def class_rows(images: torch.Tensor, probs: np.ndarray, class_names: Sequence[str],
               asked: torch.Tensor | None = None, per_row: int = 10
               ) -> tuple[torch.Tensor, list[str]]:
    """Samples grouped into a row per class (R, per_row, C, H, W; empty cells black) and the
    rows' labels. Without `asked` (unconditional samples) a row holds the samples a classifier
    assigns to that class (probs (N, K)), most confident first, labelled with the class's share
    of the samples; with `asked` (the labels the samples were drawn for) a row holds that
    class's samples in order, labelled with the share the classifier reads as it."""
    images, predicted = images.cpu(), probs.argmax(1)
    groups = np.asarray(asked.cpu()) if asked is not None else predicted
    k = len(class_names)
    counts = np.bincount(groups, minlength=k)
    shown = sorted(np.argsort(-counts, kind="stable")[:MAX_CLASS_ROWS]) if k > MAX_CLASS_ROWS \
        else range(k)
    rows = torch.zeros(len(shown), per_row, *images.shape[1:], dtype=images.dtype)
    labels = []
    for r, c in enumerate(shown):
        members = np.flatnonzero(groups == c)
        if asked is None:
            members = members[np.argsort(-probs[members, c], kind="stable")]
            labels.append(f"{class_names[c]}: {counts[c] / len(groups):.0%}")
        else:
            right = (predicted[members] == c).mean() if len(members) else 0.0
            labels.append(f"{class_names[c]}: {right:.0%} read as it")
        chosen = torch.as_tensor(members[:per_row], dtype=torch.long)
        rows[r, :len(chosen)] = images[chosen]
    return rows, labels


def save_class_rows(images: torch.Tensor, probs: np.ndarray, class_names: Sequence[str],
                    path: Path, asked: torch.Tensor | None = None, per_row: int = 10) -> Path:
    """class_rows as a labelled grid."""
    rows, labels = class_rows(images, probs, class_names, asked, per_row)
    title = ("samples per class asked for; label: share the evaluator reads as that class"
             if asked is not None else
             "samples by the evaluator's class, most confident first; label: share of samples")
    return save_labelled_grid(rows, path, row_labels=labels, title=title)


def save_captioned_grid(rows: torch.Tensor, captions: Sequence[Sequence[str]], path: Path,
                        row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
                        title: str | None = None) -> Path:
    """rows (R, K, C, H, W), each image with a caption under it (captions[r][k]; e.g. what a
    reader saw), a label per row (left, wrapped) and per column (top)."""
    n_rows, n_cols = rows.shape[:2]
    left = 2.6 if row_labels else 0.2
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                             figsize=(n_cols * 1.25 + left, n_rows * 1.45 + 0.6))
    for r in range(n_rows):
        for k in range(n_cols):
            ax = axes[r, k]
            image = _as_uint8(rows[r, k]).permute(1, 2, 0).cpu().numpy()
            ax.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image,
                      cmap="gray" if image.shape[-1] == 1 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            text = captions[r][k]
            ax.set_xlabel(textwrap.fill(text, 26), fontsize=6,
                          color="green" if text == "right" else "firebrick")
            if r == 0 and col_labels:
                ax.set_title(col_labels[k], fontsize=8)
        if row_labels:
            axes[r, 0].set_ylabel(textwrap.fill(row_labels[r], 28), fontsize=7, rotation=0,
                                  ha="right", va="center", labelpad=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=left / (n_cols * 1.25 + left), wspace=0.1, hspace=0.45)
    return _save(fig, path)
