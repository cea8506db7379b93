"""PNG plots (matplotlib, Agg backend: no display needed): compatibility-matrix heat map and backfill curves."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("Plots need matplotlib: `pip install bt2_hf[retrieval]`.") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    figure.savefig(path, dpi=120)
    plt.close(figure)
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
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
