"""PNG plots (matplotlib, Agg backend: no display needed): compatibility-matrix heat map and backfill curves."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..utils.io import atomic_write_bytes

logger = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("Plots need matplotlib: `pip install bt2_hf[retrieval]`.") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: str | os.PathLike, dpi: int) -> None:
    """Render the PNG in memory and write it atomically (a reader never sees half a plot)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def plot_compatibility_matrix(matrix, metric: str, path: str | os.PathLike) -> Path:
    """Heat map of ``C[i][j]`` (query model i, gallery model j ≤ i), values in percent.

    Args:
        matrix (`CompatibilityMatrix`): from :func:`bt2_hf.retrieval.compatibility.compatibility_matrix`.
        metric (`str`): which metric to draw.
        path (`str` or `os.PathLike`): the PNG to write.
    """
    plt = _pyplot()
    values = np.asarray(matrix.values[metric], dtype=np.float64) * 100
    figure, axes = plt.subplots(figsize=(1.2 * len(matrix.names) + 2, 1.0 * len(matrix.names) + 1.5))
    image = axes.imshow(np.ma.masked_invalid(values), cmap="viridis")
    axes.set_xticks(range(len(matrix.names)), labels=matrix.names)
    axes.set_yticks(range(len(matrix.names)), labels=matrix.names)
    axes.set_xlabel("gallery model")
    axes.set_ylabel("query model")
    for i in range(values.shape[0]):
        for j in range(i + 1):
            axes.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", color="white")
    title = (
        f"{metric} (%): AC={matrix.average_compatibility(metric):.2f}, AA={matrix.average_accuracy(metric) * 100:.1f}"
    )
    axes.set_title(title)
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    _save(plt, figure, path, dpi=120)
    return Path(path)


def plot_backfill_curves(curves: Sequence, metric: str, path: str | os.PathLike) -> Path:
    """Metric (percent) against the backfilled fraction β, one line per order, with the area in the legend."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 4))
    for curve in curves:
        label = f"{curve.order} (area {curve.area[metric] * 100:.1f})"
        axes.plot(curve.betas, np.asarray(curve.values[metric]) * 100, marker="o", label=label)
    axes.set_xlabel("backfilled fraction β")
    axes.set_ylabel(f"{metric} (%)")
    axes.set_title("Partial backfill: new queries, mixed gallery")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    _save(plt, figure, path, dpi=120)
    return Path(path)


def plot_mixed_backfill_curves(
    curves: dict, path: str | os.PathLike, new_to_old: float | None = None, new_to_new: float | None = None
) -> Path:
    """Top-1 (%) against the backfilled fraction β, per order: the gallery's rule solid, naive scoring dashed.

    Args:
        curves (`dict`): ``{order: {"betas": [...], "top1": [...], "top1_naive": [...], "area_top1": …}}`` (the
            demo's ``results["backfill"]``).
        path (`str` or `os.PathLike`): the PNG to write.
        new_to_old (`float`, *optional*), new_to_new (`float`, *optional*): reference lines.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.0, 4.2))
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    for colour, (order, curve) in zip(colours, curves.items()):
        axes.plot(curve["betas"], curve["top1"], marker="o", color=colour,
                  label=f"{order}, slots rule (area {curve['area_top1']:.1f})")  # fmt: skip
        if "top1_naive" in curve:
            axes.plot(curve["betas"], curve["top1_naive"], linestyle="--", marker=".", color=colour, alpha=0.6,
                      label=f"{order}, naive scores (area {curve['area_top1_naive']:.1f})")  # fmt: skip
    for value, label in ((new_to_old, "new → old"), (new_to_new, "new → new")):
        if value is not None:
            axes.axhline(value, color="#777777", linewidth=0.8, linestyle=":")
            axes.annotate(label, (1.0, value), textcoords="offset points", xytext=(-4, 3), ha="right", fontsize=7)
    axes.set_xlabel("backfilled fraction β")
    axes.set_ylabel("top-1 (%)")
    axes.set_title("Partial backfill: new queries, mixed gallery")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    _save(plt, figure, path, dpi=120)
    return Path(path)


def plot_method_comparison(
    results: dict, path: str | os.PathLike, metrics: Sequence[str] = ("top1", "mAP"), title: str | None = None
) -> Path:
    """Grouped bars of old/old, new/old and new/new per method (the compatibility table as a chart).

    Args:
        results (`dict`): ``{"methods": {method: {"old/old": {metric: percent}, "new/old": …, "new/new": …}}}``.
        path (`str` or `os.PathLike`): the PNG to write.
        metrics (`Sequence[str]`, *optional*): one panel per metric.
        title (`str`, *optional*): figure title (the data set, for instance).
    """
    plt = _pyplot()
    methods = list(results["methods"])
    pairs = ("old/old", "new/old", "new/new")
    colours = {"old/old": "#9e9e9e", "new/old": "#1f77b4", "new/new": "#ff7f0e"}
    panel_width = max(5.0, 0.9 * len(methods) + 1.5)
    figure, axes_list = plt.subplots(1, len(metrics), figsize=(panel_width * len(metrics), 4), squeeze=False)
    width = 0.26
    for axes, metric in zip(axes_list[0], metrics):
        positions = np.arange(len(methods))
        for offset, pair in enumerate(pairs):
            values = [results["methods"][m][pair][metric] for m in methods]
            bars = axes.bar(positions + (offset - 1) * width, values, width, label=pair, color=colours[pair])
            axes.bar_label(bars, fmt="%.1f", fontsize=7)
        axes.set_xticks(positions, methods, rotation=20, ha="right")
        axes.set_ylabel(f"{metric} (%)")
        axes.set_title(f"{metric}: query model / gallery model")
        axes.grid(axis="y", alpha=0.3)
    axes_list[0][0].legend(loc="lower right")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    _save(plt, figure, path, dpi=120)
    return Path(path)


def plot_retrieval_grid(
    query_images,
    retrieved_images: Sequence,
    query_labels,
    retrieved_labels: Sequence,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """One row per query: the query image, then its nearest gallery items (green frame = same class, red = not).

    Args:
        query_images (array of shape `(n, C, H, W)` or `(n, H, W)`): the query images (uint8 or float).
        retrieved_images (`Sequence` of arrays `(k, C, H, W)`): the retrieved gallery images, per query.
        query_labels (`array-like` of shape `(n,)`): class ids of the queries.
        retrieved_labels (`Sequence` of `array-like`): class ids of the retrieved items, per query.
        class_names (`Sequence[str]`): a name per class id.
        path (`str` or `os.PathLike`): the PNG to write.
        title (`str`, *optional*): figure title.
    """
    plt = _pyplot()
    rows = len(query_labels)
    columns = 1 + max(len(r) for r in retrieved_labels)
    figure, axes = plt.subplots(rows, columns, figsize=(1.1 * columns, 1.2 * rows), squeeze=False)

    def show(ax, image, frame=None, caption=None):
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
        ax.imshow(image, cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        if frame is not None:
            for spine in ax.spines.values():
                spine.set_edgecolor(frame)
                spine.set_linewidth(2.5)
        if caption:
            ax.set_title(caption, fontsize=6)

    for row in range(rows):
        show(axes[row][0], query_images[row], "black", f"query: {class_names[int(query_labels[row])]}")
        for column in range(1, columns):
            ax = axes[row][column]
            if column - 1 >= len(retrieved_labels[row]):
                ax.axis("off")
                continue
            same = int(retrieved_labels[row][column - 1]) == int(query_labels[row])
            show(ax, retrieved_images[row][column - 1], "#2ca02c" if same else "#d62728")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    _save(plt, figure, path, dpi=110)
    return Path(path)
