"""The paper's figures from a study's results table (results.collect), as far as its runs allow.

Each figure varies a few settings and holds the others at one value (results.hold_fixed); it is
drawn when its results have at least two values of what it varies. Figures 7, 8 and 9b follow
the paper's rule for runs that do not fit the training data (results.fitted_accuracy): chance,
hatched. Returns matplotlib figures; report.py writes them.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from needles_tf.experiments import plots
from needles_tf.experiments.results import (
    fitted_accuracy,
    hold_fixed,
    minimum_train_size,
    trained_mean,
)

KINDS = {"nmnist": "nMNIST", "ncamelyon": "nCAMELYON", "noise": "Gaussian noise"}


def _by_kind(results: pd.DataFrame, varied: tuple[str, ...], kinds=("nmnist", "ncamelyon"),
             need: tuple[str, ...] = ()) -> dict[str, pd.DataFrame]:
    """Per kind of data: the rows of a figure varying `varied`, where each setting in `need`
    (and the O2I ratio) takes at least two values."""
    out = {}
    for kind in kinds:
        rows = hold_fixed(results[results["kind"] == kind], varied)
        if len(rows) and all(rows[k].nunique() >= 2 for k in need):
            out[kind] = rows
    return out


def fig4(results: pd.DataFrame):
    """Test accuracy against the O2I ratio (mean +- std over seeds; nCAMELYON over crop sizes
    too)."""
    data = _by_kind(results, (), need=("o2i_label",))
    if not data:
        return None
    figure, axes = plots.panels(len(data))
    for ax, (kind, rows) in zip(axes, data.items()):
        order = plots.o2i_order(rows)
        stats = rows.groupby("o2i_label")["test_accuracy"].agg(["mean", "std"]).loc[order]
        ax.errorbar(range(len(order)), stats["mean"], yerr=stats["std"].fillna(0), marker="o",
                    capsize=3)
        ax.set_xticks(range(len(order)), order, fontsize=8)
        ax.set_xlabel("O2I ratio")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0.4, 1.02)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(KINDS[kind])
    return figure


def _lines_per_o2i(results: pd.DataFrame, x: str, kinds, log_x=False, y="test_accuracy"):
    data = _by_kind(results, (x,), kinds, need=(x,))
    if not data:
        return None
    figure, axes = plots.panels(len(data))
    for ax, (kind, rows) in zip(axes, data.items()):
        plots.lines(ax, rows, x, "o2i_label", y, log_x)
        ax.set_title(KINDS[kind])
    return figure


def fig5a(results):
    """Test accuracy against the training-set size, per O2I (nMNIST)."""
    return _lines_per_o2i(results, "train_size", ("nmnist",), log_x=True)


def fig5b(results):
    """Test accuracy against capacity (width scale s), per O2I (nMNIST)."""
    return _lines_per_o2i(results, "width_scale", ("nmnist",), log_x=True)


def fig5c(results):
    """Test accuracy against capacity, per O2I bin (nCAMELYON)."""
    return _lines_per_o2i(results, "width_scale", ("ncamelyon",), log_x=True)


def _size_heatmaps(results: pd.DataFrame, poolings: list[str] | None):
    """Mean validation accuracy of runs above 70 % training accuracy, O2I x training-set size,
    any capacity, one panel per pooling."""
    rows = results[results["kind"] == "nmnist"]
    rows = hold_fixed(rows, ("train_size", "pooling", "width_scale"))
    if rows["train_size"].nunique() < 2:
        return None
    poolings = poolings or sorted(rows["pooling"].unique())
    figure, axes = plots.panels(len(poolings), width=4.6)
    for ax, pooling in zip(axes, poolings):
        at = rows[rows["pooling"] == pooling]
        order = plots.o2i_order(at)
        table = pd.DataFrame({size: {label: trained_mean(at[(at["o2i_label"] == label)
                                                            & (at["train_size"] == size)])
                                     for label in order}
                              for size in sorted(at["train_size"].unique())}).loc[order]
        plots.heatmap(ax, table, f"{pooling} pooling: validation accuracy")
        ax.set_xlabel("training-set size")
        ax.set_ylabel("O2I ratio")
    return figure


def fig6a(results):
    """Validation accuracy heatmap, O2I x training-set size, max pooling (footnote 5: the mean
    over runs above 70 % training accuracy)."""
    return _size_heatmaps(results, ["max"]) if (results["pooling"] == "max").any() else None


def fig14(results):
    """Fig. 6a for every pooling."""
    return _size_heatmaps(results, None)


def _minimum_sizes(results: pd.DataFrame, poolings: list[str] | None):
    """Smallest training set reaching 70 % and 85 % validation accuracy per O2I (NaN: none)."""
    rows = hold_fixed(results[results["kind"] == "nmnist"], ("train_size", "pooling",
                                                             "width_scale"))
    if rows["train_size"].nunique() < 2:
        return None
    poolings = poolings or sorted(rows["pooling"].unique())
    figure, axes = plots.panels(len(poolings))
    for ax, pooling in zip(axes, poolings):
        at = rows[rows["pooling"] == pooling]
        order = plots.o2i_order(at)
        values = {}
        for threshold in (0.70, 0.85):
            sizes = minimum_train_size(at, threshold)
            for label in order:
                missing = pd.isna(sizes.get(label))
                values[(label, f"{threshold:.0%}")] = (
                    at["train_size"].max() * 1.1 if missing else sizes[label], 0, missing)
        plots.bars(ax, order, ["70%", "85%"], values, "val. accuracy", "min. training set",
                   chance_line=False)
        ax.set_title(f"{pooling} pooling (hatched: not reached)", fontsize=9)
    return figure


def fig6b(results):
    return _minimum_sizes(results, ["max"]) if (results["pooling"] == "max").any() else None


def fig15(results):
    return _minimum_sizes(results, None)


def _fitted_bars(results: pd.DataFrame, factor: str):
    data = _by_kind(results, (factor,), need=(factor,))
    if not data:
        return None
    figure, axes = plots.panels(len(data), width=5)
    for ax, (kind, rows) in zip(axes, data.items()):
        order, hues = plots.o2i_order(rows), sorted(rows[factor].unique(), key=str)
        values = {(label, hue): fitted_accuracy(at)
                  for (label, hue), at in rows.groupby(["o2i_label", factor])}
        plots.bars(ax, order, hues, values, factor, "test accuracy")
        ax.set_title(f"{KINDS[kind]} (hatched: no seed fits, chance)", fontsize=9)
    return figure


def fig7(results):
    """Test accuracy per O2I and receptive field: runs that fit, else chance (hatched)."""
    return _fitted_bars(results, "receptive_field")


def fig8(results):
    """Test accuracy per O2I and global pooling: runs that fit, else chance (hatched)."""
    return _fitted_bars(results, "pooling")


def _fit_bars(results: pd.DataFrame, value: Callable[[pd.DataFrame], tuple], ylabel: str):
    data = _by_kind(results, ("pooling",), ("nmnist", "noise"))
    data = {k: rows for k, rows in data.items() if rows["o2i_label"].nunique() >= 2
            or k == "noise"}
    if not data or "nmnist" not in data:
        return None
    figure, axes = plots.panels(len(data), width=5)
    for ax, (kind, rows) in zip(axes, data.items()):
        groups = (plots.o2i_order(rows) if kind == "nmnist" else
                  sorted(rows["image_size"].astype(str).unique(), key=int))
        key = "o2i_label" if kind == "nmnist" else rows["image_size"].astype(str)
        values = {(group, pooling): value(at)
                  for (group, pooling), at in rows.groupby([key, "pooling"])}
        plots.bars(ax, groups, sorted(rows["pooling"].unique()), values, "pooling", ylabel,
                   chance_line=False)
        ax.set_ylim(0, max([1.0, *(1.1 * v[0] for v in values.values())]))  # counts from 0
        ax.set_title(KINDS[kind] + ("" if kind == "nmnist" else " (by image size)"), fontsize=9)
    return figure


def fig9a(results):
    """Epochs until training accuracy reaches 99 % (mean over the seeds that get there;
    hatched: not every seed does), per O2I and pooling; Gaussian noise beside it."""
    def epochs(rows):
        fitted = rows[rows["fits"]]
        mean = float(fitted["epochs_to_fit"].mean()) if len(fitted) else 0.0
        return mean, 0.0, len(fitted) < len(rows)
    return _fit_bars(results, epochs, "epochs to fit")


def fig9b(results):
    """Runs that fit the training data (of all seeds; hatched: not every seed), per O2I and
    pooling."""
    return _fit_bars(results, lambda rows: (int(rows["fits"].sum()), 0.0,
                                            not rows["fits"].all()), "runs that fit")


def fig12(results):
    """Test accuracy against the training set's class balance, one line per pooling, a panel
    per receptive field."""
    return _lines_by_panel(results, "class_balance", "pooling", "receptive_field")


def fig13(results):
    """Test accuracy against capacity, one line per training-set size, a panel per
    receptive field."""
    return _lines_by_panel(results, "width_scale", "train_size", "receptive_field")


def _lines_by_panel(results: pd.DataFrame, x: str, hue: str, panel: str):
    rows = hold_fixed(results[results["kind"] == "nmnist"], (x, hue, panel))
    if rows.empty or rows[x].nunique() < 2:
        return None
    rows = rows[rows["o2i_label"] == rows["o2i_label"].mode().iloc[0]]
    values = sorted(rows[panel].unique(), key=str)
    figure, axes = plots.panels(len(values))
    for ax, value in zip(axes, values):
        plots.lines(ax, rows[rows[panel] == value], x, hue, log_x=x == "width_scale")
        ax.set_title(f"nMNIST O2I {rows['o2i_label'].iloc[0]}, {plots.label_of(panel)} {value}",
                     fontsize=9)
    return figure


def fig17(results: pd.DataFrame):
    """Weakly supervised detection on the test split per O2I and pooling (mean +- std over
    seeds): the saliency maximum's detection AP, and its pointing accuracy (x: chance, the
    share of the image the needle covers)."""
    scored = results[(results["kind"] == "nmnist") & results["saliency_ap"].notna()]
    rows = hold_fixed(scored, ("pooling",))  # among the runs that scored detection
    if rows.empty or rows["o2i_label"].nunique() < 2:
        return None
    groups, poolings = plots.o2i_order(rows), sorted(rows["pooling"].unique())
    figure, axes = plots.panels(2, width=5)
    for ax, metric, ylabel in ((axes[0], "saliency_ap", "detection AP (saliency)"),
                               (axes[1], "saliency_pointing", "pointing accuracy (saliency)")):
        stats = rows.groupby(["o2i_label", "pooling"])[metric].agg(["mean", "std"])
        values = {key: (m, 0.0 if pd.isna(sd) else sd, False)
                  for key, (m, sd) in stats.iterrows()}
        plots.bars(ax, groups, poolings, values, "pooling", ylabel, chance_line=False)
        ax.set_ylim(0, 1.05)
        ax.set_title("nMNIST", fontsize=9)
    chance = rows.groupby("o2i_label")["pointing_chance"].mean()
    axes[1].plot(range(len(groups)), [chance[g] for g in groups], "kx", label="chance")
    axes[1].legend(fontsize=7)
    return figure


# Figures that draw the paper's rule (a configuration none of whose seeds fits stands at chance)
# where the verdicts read every run's test accuracy: findings.md says so under them.
CHANCE_FOR_UNFIT = ("7", "8")

FIGURES: dict[str, Callable] = {
    "4": fig4, "5a": fig5a, "5b": fig5b, "5c": fig5c, "6a": fig6a, "6b": fig6b, "7": fig7,
    "8": fig8, "9a": fig9a, "9b": fig9b, "12": fig12, "13": fig13, "14": fig14, "15": fig15,
    "17": fig17}
