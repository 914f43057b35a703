"""Pictures of translation results: labelled sample grids, Pareto plots and loss curves (matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

__all__ = ["save_translation_grid", "save_pareto", "save_loss_curves"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_translation_grid(
    rows: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    column_labels: Sequence[str] | None = None,
    cell_labels: Mapping[str, Sequence[str]] | None = None,
    cell_ok: Mapping[str, Sequence[bool]] | None = None,
    scale: float = 4.0,
    title: str | None = None,
) -> Path:
    """One row of images per entry of ``rows`` (``name -> (n, C, H, W)`` in ``[-1, 1]``).

    Each image is drawn at ``scale`` times its pixel size (``scale >= 3``), columns are titled
    by ``column_labels`` (e.g. the source class), rows by their name; ``cell_labels[name][k]``
    is printed under image ``k`` of that row, green when ``cell_ok[name][k]`` else red.
    """
    if not rows:
        raise ValueError("rows must hold at least one image row.")
    names = list(rows)
    n = len(rows[names[0]])
    h, w = rows[names[0]].shape[-2:]
    dpi = 100
    cw, ch = scale * w / dpi, scale * h / dpi
    label_h = 0.18 if cell_labels else 0.0
    plt = _plt()
    fig, axes = plt.subplots(
        len(names), n, figsize=(n * cw * 1.08 + 1.8, len(names) * (ch + label_h) * 1.1 + 0.5), squeeze=False
    )
    for r, name in enumerate(names):
        imgs = rows[name].detach().cpu().clamp(-1, 1).add(1).div(2)
        for k in range(n):
            ax = axes[r, k]
            img = imgs[k]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and column_labels is not None:
                ax.set_title(str(column_labels[k]), fontsize=8)
            if cell_labels and name in cell_labels:
                ok = None if not cell_ok or name not in cell_ok else cell_ok[name][k]
                color = "black" if ok is None else ("tab:green" if ok else "tab:red")
                ax.set_xlabel(str(cell_labels[name][k]), fontsize=7, color=color, labelpad=1)
            if k == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def save_pareto(
    points: Mapping[str, tuple[float, float, float, float]],
    references: Mapping[str, tuple[float, float]],
    path: str | Path,
    *,
    xlabel: str = "style transfer (% judged target-style)",
    ylabel: str = "successful translations (%)",
    title: str | None = None,
) -> Path:
    """Scatter of methods ``name -> (x, y, x_std, y_std)`` (error bars) and marked references.

    ``references`` (``name -> (x, y)``, e.g. identity and oracle) are drawn as black stars.
    Values are in percent.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    cmap = plt.get_cmap("tab10")
    for k, (name, (x, y, sx, sy)) in enumerate(points.items()):
        ax.errorbar(x, y, xerr=sx, yerr=sy, fmt="o", color=cmap(k % 10), label=name, capsize=2, ms=5)
    for name, (x, y) in references.items():
        if math.isfinite(x) and math.isfinite(y):
            ax.plot(x, y, "*", color="black", ms=11)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    return _finish(fig, ax, path, xlabel, ylabel, title, legend_loc="upper left")


def save_loss_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]], path: str | Path, *, title: str | None = None,
    ylabel: str = "validation CFM loss",
) -> Path:
    """One line per entry ``name -> [(step, loss), ...]``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, pts in curves.items():
        if pts:
            s, v = zip(*pts, strict=True)
            ax.plot(s, v, label=name, lw=1.2)
    return _finish(fig, ax, path, "training step", ylabel, title)


def _finish(fig, ax, path: str | Path, xlabel: str, ylabel: str, title: str | None,
            legend_loc: str = "best") -> Path:
    """Labels, grid, legend and title; save at 120 dpi and close."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=legend_loc, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
