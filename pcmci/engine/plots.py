"""PNG plots for reports: confusion matrices, training curves, grouped ID/OOD bars."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_confusion(cm: np.ndarray, classes: list[str], path: str | Path, title: str) -> None:
    """Row-normalised confusion matrix with counts in the cells."""
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = 1.0 + 0.55 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    if len(classes) <= 30:
        for i, j in np.ndindex(cm.shape):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion: {title}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """Split a ``metrics.jsonl`` into (per-step records, per-epoch summaries)."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in records if "step" in r], [r for r in records if "train_loss" in r]


def plot_training_curves(runs: dict[str, str | Path], path: str | Path) -> None:
    """Per-step loss (smoothed) and per-epoch train accuracy for each named run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for name, metrics in runs.items():
        steps, epochs = read_metrics(metrics)
        loss = np.array([r["loss"] for r in steps])
        window = max(1, len(loss) // 25)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax_loss.plot(np.arange(len(smooth)) + window, smooth, label=name)
        ax_acc.plot([r["epoch"] + 1 for r in epochs], [r["train_acc"] for r in epochs], marker="o", label=name)
    ax_loss.set(xlabel="step", ylabel="training loss (moving average)", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="training accuracy", title="train accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grouped_bars(values: dict[str, dict[str, tuple[float, float]]], path: str | Path, ylabel: str,
                      title: str) -> None:
    """``values[model][group] = (mean, std)`` -> grouped bars with error bars and value labels."""
    models = list(values)
    groups = list(next(iter(values.values())))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(groups), 4))
    for i, model in enumerate(models):
        xs = np.arange(len(groups)) + (i - (len(models) - 1) / 2) * width
        means = [values[model][g][0] for g in groups]
        stds = [values[model][g][1] for g in groups]
        bars = ax.bar(xs, means, width, yerr=stds, capsize=3, label=model)
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1.1))
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heatmaps(maps: dict[str, np.ndarray], path: str | Path, labels: list[str] | None = None,
                  columns: int = 4) -> None:
    """One heatmap per named matrix in a grid; axes of length ``len(labels)`` are tick-labelled with them."""
    rows = -(-len(maps) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    for ax, (name, matrix) in zip(axes.flat, maps.items()):
        im = ax.imshow(matrix, cmap="viridis", aspect="auto")
        ax.set_title(name, fontsize=8)
        if labels and matrix.shape[0] == len(labels) and len(labels) <= 40:
            ax.set_yticks(range(len(labels)), labels, fontsize=5)
        if labels and matrix.shape[1] == len(labels) and len(labels) <= 40:
            ax.set_xticks(range(len(labels)), labels, fontsize=5, rotation=90)
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in list(axes.flat)[len(maps):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
