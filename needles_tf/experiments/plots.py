"""Drawing primitives of the report's figures: lines with error bars, grouped bars (hatched
where a value is the chance level standing in for runs that did not fit), heatmaps."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from needles_tf import atomic  # noqa: E402
from needles_tf.experiments.results import CHANCE  # noqa: E402

HATCH = "//"


def panels(count: int, width: float = 4.2, height: float = 3.4):
    """A figure with `count` panels side by side; returns (figure, axes list)."""
    figure, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    return figure, list(axes[0])


def o2i_order(rows: pd.DataFrame) -> list[str]:
    """The O2I labels of `rows`, largest ratio first (the paper's x axes)."""
    ordered = rows.sort_values("o2i", ascending=False)["o2i_label"]
    return list(dict.fromkeys(ordered))


def lines(ax, rows: pd.DataFrame, x: str, hue: str, y: str = "test_accuracy",
          log_x: bool = False) -> None:
    """Mean +- standard deviation over seeds of `y` against `x`, one line per `hue` value."""
    for value, group in rows.groupby(hue, sort=True):
        stats = group.groupby(x)[y].agg(["mean", "std"]).sort_index()
        ax.errorbar(stats.index.astype(float), stats["mean"], yerr=stats["std"].fillna(0),
                    marker="o", capsize=3, label=f"{label_of(hue)} {value}")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(label_of(x))
    ax.set_ylabel(y.replace("_", " "))
    ax.axhline(CHANCE, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7)


def bars(ax, groups: Sequence[str], hues: Sequence[str], values: dict, hue_name: str,
         ylabel: str, chance_line: bool = True) -> None:
    """Grouped bars: values[(group, hue)] = (height, error, hatched)."""
    width = 0.8 / max(len(hues), 1)
    for j, hue in enumerate(hues):
        for i, group in enumerate(groups):
            if (group, hue) not in values:
                continue
            height, error, hatched = values[(group, hue)]
            ax.bar(i + (j - (len(hues) - 1) / 2) * width, height, width, yerr=error,
                   capsize=2, color=f"C{j}", hatch=HATCH if hatched else None,
                   edgecolor="black" if hatched else None,
                   label=f"{label_of(hue_name)} {hue}" if i == 0 or (groups[0], hue)
                   not in values else None)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel)
    if chance_line:
        ax.axhline(CHANCE, color="grey", lw=0.8, ls=":")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7)


def heatmap(ax, table: pd.DataFrame, title: str, fmt: str = "{:.2f}") -> None:
    """Cells of `table` (rows x columns) coloured and written; NaN cells left blank."""
    data = table.to_numpy(dtype=float)
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0.5, vmax=1.0,
                      aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], fontsize=7,
                  rotation=45)
    ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index], fontsize=7)
    for (i, j), value in np.ndenumerate(data):
        if np.isfinite(value):
            ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=7,
                    color="white" if value < 0.75 else "black")
    ax.set_title(title, fontsize=9)
    plt.colorbar(image, ax=ax, fraction=0.046)


def save(figure, path_stem: str) -> list[str]:
    """Writes the figure as PNG and PDF (each atomically); returns the paths."""
    figure.tight_layout()
    paths = [f"{path_stem}.png", f"{path_stem}.pdf"]
    for path in paths:
        with atomic.atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=120, format=path.rsplit(".", 1)[1])
    plt.close(figure)
    return paths


def label_of(name: str) -> str:
    return {"receptive_field": "RF", "width_scale": "s", "train_size": "train size",
            "class_balance": "class balance", "o2i_label": "O2I"}.get(name, name)
