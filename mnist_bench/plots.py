"""Figures shared by the training job and the report: curves, confusion matrix, time bars."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence

import matplotlib

if "ipykernel" not in sys.modules:  # scripts and jobs draw off-screen; notebooks keep inline
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

CURVE_TITLES = {
    "train_loss": "Cross-entropy loss (train)",
    "train_acc": "Training accuracy",
    "val_acc": "Validation accuracy",
    "val_loss": "Cross-entropy loss (validation)",
}
History = Sequence[Mapping[str, float]]


def _draw(ax, groups: Mapping[str, Sequence[History]], metric: str) -> None:
    """One line per group (e.g. per learning rate): the mean over its histories (e.g. seeds)
    in a band of one standard deviation, cut to the range the runs span, with each run as a
    thin line, so that seeds that split (some learn, some stay at chance) show as such. Groups
    whose labels share their first word (``lr=0.01 learned``, ``lr=0.01 at chance``) share a
    colour, the later ones dashed."""
    colours: dict[str, str] = {}
    for label, histories in groups.items():
        curves = [[row[metric] for row in h if metric in row] for h in histories]
        length = max(len(c) for c in curves)
        if length == 0:
            continue
        values = np.full((len(curves), length), np.nan)  # a run that stopped early: NaN after
        for row, curve in zip(values, curves, strict=True):
            row[:len(curve)] = curve
        counts = np.sum(~np.isnan(values), axis=0)  # each epoch's mean is over the runs there
        epochs, mean = np.arange(1, length + 1), np.nansum(values, axis=0) / counts
        family = label.split(" ")[0]
        line, = ax.plot(epochs, mean, marker="o", markersize=3, label=label,
                        color=colours.get(family), linestyle="--" if family in colours else "-")
        colours.setdefault(family, line.get_color())
        if len(values) > 1:
            sd = np.sqrt(np.nansum((values - mean) ** 2, axis=0) / np.maximum(counts - 1, 1))
            low = np.maximum(mean - sd, np.nanmin(values, axis=0))
            high = np.minimum(mean + sd, np.nanmax(values, axis=0))
            ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
            ax.plot(epochs, values.T, color=line.get_color(), linewidth=0.6, alpha=0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    low, high = ax.get_xlim()
    if high - low < 2:  # one epoch: the locator would fall back to fractions of one
        ax.set_xticks(range(math.ceil(low), math.floor(high) + 1))
    ax.grid(alpha=0.3)


def plot_curves(groups: Mapping[str, Sequence[History]],
                metrics: Sequence[str] = ("train_loss", "train_acc", "val_acc"),
                title: str = "") -> Figure:
    """One panel per metric against epoch; one line per group of histories (per learning rate),
    its mean over the group's runs (seeds) with a band of one standard deviation.

    These are the report's Figures 18-26 (loss, train accuracy, validation accuracy).
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        _draw(ax, groups, metric)
        ax.set(title=CURVE_TITLES.get(metric, metric), xlabel="epoch")
        if ax.get_legend_handles_labels()[0]:  # a metric no run logged leaves the panel empty
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix: np.ndarray, title: str = "") -> Figure:
    """Counts per (true, predicted) digit, as scikit-learn's ``ConfusionMatrixDisplay`` draws
    them: a blue scale, each count printed in its cell."""
    fig, ax = plt.subplots(figsize=(6, 5.4))
    image = ax.imshow(matrix, cmap="Blues")
    threshold = matrix.max() / 2
    for (row, col), count in np.ndenumerate(matrix):
        colour = image.cmap(0.0) if count > threshold else image.cmap(1.0)
        ax.text(col, row, f"{count:d}", ha="center", va="center", color=colour, fontsize=8)
    digits = range(len(matrix))
    ax.set(xticks=digits, yticks=digits, xlabel="Predicted label", ylabel="True label",
           title=title or "Confusion matrix (test set)")
    fig.tight_layout()
    return fig


def plot_bars(values: Mapping[str, float], ylabel: str, title: str,
              errors: Mapping[str, float] | None = None) -> Figure:
    """A labelled bar chart, e.g. training time per learning rate (the report's Figure 27),
    with error bars (e.g. one standard deviation over seeds) where ``errors`` gives them."""
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(values) + 1.5), 3.6))
    yerr = [errors.get(k, 0.0) for k in values] if errors else None
    bars = ax.bar(list(values), list(values.values()), color="tab:blue", yerr=yerr, capsize=4)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    return fig


def plot_overview(groups_by_model: Mapping[str, Mapping[str, Sequence[History]]],
                  metric: str = "val_acc") -> Figure:
    """One panel per model with its validation curve for every learning rate (mean and band
    over seeds)."""
    n = len(groups_by_model)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.6), squeeze=False, sharey=True)
    for ax, (model, groups) in zip(axes[0], groups_by_model.items(), strict=True):
        _draw(ax, groups, metric)
        ax.set(title=model, xlabel="epoch")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(CURVE_TITLES.get(metric, metric))
    fig.tight_layout()
    return fig


def save(fig: Figure, path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
