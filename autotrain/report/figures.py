"""The report's pictures: one function a figure, data in, matplotlib Figure out.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot): no global state and
no display backend, so they draw anywhere (the Agg canvas renders the PNG). Sizes are fixed
or grow with the number of classes, never cropped at save time, so a figure's pixel size is
``figsize * DPI``.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.figure import Figure

DPI = 100
TRAIN, VAL, BEST = "#1f77b4", "#d62728", "#555555"


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes at DPI (its size in inches times DPI)."""
    buf = io.BytesIO()
    # No "Software" key: the same figure gives the same bytes whatever matplotlib wrote it.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _column(history: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in history], dtype=np.float64)


def curves_figure(history: list[dict], best: int | None) -> Figure:
    """Loss (log scale), accuracy and learning rate per epoch, side by side on shared epoch
    axes; train and validation in two colours; the best epoch (highest val_acc) marked."""
    epochs = np.array([r["epoch"] for r in history])
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    panels = (("loss", "train_loss", "val_loss"), ("accuracy", "train_acc", "val_acc"), ("learning rate", "lr", None))
    for ax, (title, train_key, val_key) in zip(axes, panels):
        train = _column(history, train_key)
        ax.plot(epochs, train, marker="o", ms=3, color=TRAIN, label="train" if val_key else "lr at epoch end")
        if val_key and np.isfinite(_column(history, val_key)).any():  # no line for a run without validation
            ax.plot(epochs, _column(history, val_key), marker="o", ms=3, color=VAL, label="validation")
        if best is not None:
            ax.axvline(best, color=BEST, ls="--", lw=1, label=f"best epoch {best}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if val_key:
            ax.legend(fontsize=8)
    # Cross-entropy falls by orders of magnitude: a linear axis shows only the first epoch.
    if np.nanmin(np.r_[_column(history, "train_loss"), _column(history, "val_loss")]) > 0:
        axes[0].set_yscale("log")
    if best is not None:
        row = next(r for r in history if r["epoch"] == best)
        axes[1].plot([best], [row["val_acc"]], marker="*", ms=14, color=VAL, zorder=5)
        axes[1].annotate(f"{row['val_acc']:.4f}", (best, row["val_acc"]), textcoords="offset points",
                         xytext=(6, -14), fontsize=9, color=VAL)
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if len(epochs) <= 20:
        axes[0].set_xticks(epochs)
    return fig


def _matrix_side(n: int) -> float:
    """Inches per matrix panel: about 0.3 inch a class, so ~50 names still get a readable row."""
    return min(max(1.5 + 0.3 * n, 4.5), 16.0)


def _label_size(n: int) -> float:
    # 0.3 inch a class is ~22 points: 7-point names still fit at 50 classes.
    return 10 if n <= 15 else max(7.0, 10 - (n - 15) * 0.09)


def confusion_figure(counts: np.ndarray, names: list[str]) -> Figure:
    """Counts and row-normalised (recall per true class) confusion matrices side by side,
    true class on rows, prediction on columns, class names on both axes. Cell values are
    written while they fit (up to 30 classes); zero shares are left blank, and from 13
    classes on zero counts too, so that the confusions stand out."""
    n = len(names)
    side = _matrix_side(n)
    fig = Figure(figsize=(2 * side + 2.0, side + 1.0), layout="constrained")
    axes = fig.subplots(1, 2)
    rows = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normed = np.where(rows > 0, counts / np.maximum(rows, 1), 0.0)
    label_size = _label_size(n)
    cell_size = min(10.0, 220.0 / max(n, 1) ** 1.1)
    for ax, values, title, fmt in ((axes[0], counts, "counts", "{:d}"),
                                   (axes[1], normed, "row-normalised (share of each true class)", "{:.2f}")):
        im = ax.imshow(values, cmap="Blues", vmin=0, vmax=values.max() if values.max() > 0 else 1)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(n), names, fontsize=label_size, rotation=90 if n > 10 or max(map(len, names)) > 3 else 0)
        ax.set_yticks(range(n), names, fontsize=label_size)
        if n <= 30:
            top = values.max() if values.max() > 0 else 1
            for i in range(n):
                for j in range(n):
                    v = values[i, j]
                    if v == 0 and (n > 12 or fmt != "{:d}"):
                        continue
                    text = fmt.format(int(v)) if fmt == "{:d}" else fmt.format(v)
                    ax.text(j, i, text, ha="center", va="center", fontsize=cell_size,
                            color="white" if v > 0.6 * top else "black")
    return fig


def per_class_figure(precision: np.ndarray, recall: np.ndarray, names: list[str]) -> Figure:
    """Precision and recall per class as paired dots (a class never predicted has no
    precision: drawn as an open marker at 0 and listed in the title). The y axis starts
    just below the lowest value so that differences between good classes stay visible."""
    n = len(names)
    x = np.arange(n)
    fig = Figure(figsize=(min(max(2.5 + 0.32 * n, 7.0), 20.0), 4.0), layout="constrained")
    ax = fig.subplots()
    undefined = [names[i] for i in range(n) if math.isnan(precision[i])]
    p = np.nan_to_num(precision, nan=0.0)
    r = np.nan_to_num(recall, nan=0.0)
    ax.vlines(x, np.minimum(p, r), np.maximum(p, r), color="#bbbbbb", lw=1)
    ax.plot(x, p, "o", color=TRAIN, label="precision")
    ax.plot(x, r, "s", color=VAL, label="recall", mfc="none")
    if n <= 20:
        for i in range(n):
            ax.annotate(f"{p[i]:.3f}", (x[i], p[i]), textcoords="offset points", xytext=(6, 2), fontsize=7, color=TRAIN)
            ax.annotate(f"{r[i]:.3f}", (x[i], r[i]), textcoords="offset points", xytext=(6, -9), fontsize=7, color=VAL)
    low = float(min(p.min(), r.min())) if n else 0.0
    ax.set_ylim(max(0.0, math.floor((low - 0.02) * 20) / 20), 1.01)
    ax.set_xticks(x, names, fontsize=_label_size(n), rotation=90 if n > 15 or max(map(len, names)) > 4 else 0)
    ax.set_xlim(-0.6, n - 0.4 + (0.5 if n <= 20 else 0))
    ax.set_xlabel("class")
    ax.grid(axis="y", alpha=0.3)
    # Above the axes: inside, the legend would hide some class's dots.
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False)
    title = "precision and recall per class"
    if undefined:
        title += f" (never predicted, precision undefined: {', '.join(undefined[:10])})"
    ax.set_title(title, loc="left")
    return fig


def most_confident_mistakes(labels: np.ndarray, predictions: np.ndarray, probabilities: np.ndarray,
                            limit: int) -> np.ndarray:
    """Indices of wrong predictions, most confident first (ties in the data's order)."""
    wrong = np.flatnonzero(predictions != labels)
    confidence = probabilities[wrong, predictions[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:limit]


def mistakes_figure(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                    probabilities: np.ndarray, names: list[str], limit: int = 24, columns: int = 8) -> Figure:
    """A grid of the most confidently wrong images: each titled with its true class, the
    predicted class and the probability given to it. ``images`` are NCHW in 0..1."""
    chosen = most_confident_mistakes(labels, predictions, probabilities, limit)
    if len(chosen) == 0:
        fig = Figure(figsize=(8, 1.2), layout="constrained")
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, f"no misclassified images among {len(labels)}", ha="center", va="center", fontsize=12)
        return fig
    cols = min(columns, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    cell_w, cell_h, title_h = 1.65, 1.95, 0.42
    fig = Figure(figsize=(cell_w * cols, cell_h * rows))
    # Fixed margins instead of a layout engine: a grid of equal cells needs no solver, and
    # constrained layout costs about a second for 24 titled axes.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - title_h / (cell_h * rows),
                        wspace=0.08, hspace=title_h / (cell_h - title_h))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, chosen):
        img = np.clip(images[i], 0.0, 1.0)
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(np.transpose(img[:3], (1, 2, 0)), interpolation="nearest")
        pred = predictions[i]
        ax.set_title(f"true {names[labels[i]]}\npred {names[pred]} ({probabilities[i, pred]:.2f})", fontsize=9)
    return fig
