"""The runs of a study as one tidy table, and the paper's rules for reading it.

Only each run's summary.json is read (the report depends on no other file name): its settings,
what it trained on (the O2I ratio) and its metrics. "Training accuracy" throughout is the
epoch's running mean over its training batches (Keras' metric while the weights change, as
the paper's code reports it), not a separate clean pass; a run *fits* when it reaches 99 % in
some epoch (summary.json's epochs_to_fit).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import numpy as np
import pandas as pd

FIT_ACCURACY = 0.99  # the paper's "fits the training data"
TRAINED_ACCURACY = 0.70  # Fig. 6a (footnote 5) averages runs above this training accuracy
CHANCE = 0.5
# A run's settings (besides its data and seed); figures hold the ones they do not plot at the
# paper's value where the results have it (PREFERRED), else at the most common one.
SETTINGS = ("receptive_field", "blocks", "width_scale", "pooling", "normalization",
            "train_size", "class_balance", "optimizer", "learning_rate", "lr_milestones",
            "epochs", "batch_size")
PREFERRED = {"pooling": "max", "width_scale": 1.0, "class_balance": 0.5,
             "optimizer": "rmsprop", "learning_rate": 5e-5}
METRICS = ("val_accuracy", "test_accuracy", "test_auc", "final_train_accuracy",
           "last_train_gain", "fits", "epochs_to_fit", "best_epoch", "stopped_epoch",
           "epoch_cap", "stop_reason", "parameters", "wall_seconds")
# weakly supervised detection on the test split (needles-train --score_detection): detection AP
# and pointing accuracy of the saliency and the evidence maps' maxima, and pointing's chance
DETECTION = ("saliency_ap", "saliency_pointing", "evidence_ap", "evidence_pointing",
             "pointing_chance")


def collect(root: str) -> pd.DataFrame:
    """One row per finished run under `root` (every summary.json found), sorted by run."""
    rows = []
    for path in sorted(glob.glob(os.path.join(root, "**", "summary.json"), recursive=True)):
        with open(path) as f:
            summary = json.load(f)
        if summary.get("status") == "finished":
            rows.append(_row(summary, os.path.relpath(os.path.dirname(path), root)))
    return pd.DataFrame(rows, columns=_columns())


def _columns() -> list[str]:
    return ["run", "kind", "dataset", "o2i", "o2i_label", "image_size", "train_images",
            *SETTINGS, "seed", *METRICS, *DETECTION]


def _row(summary: dict[str, Any], run: str) -> dict[str, Any]:
    config, data = summary["config"], summary.get("dataset", {})
    kind = data.get("kind", "unknown")
    o2i, label = o2i_of(kind, data.get("params", {}))
    receptive_field = config.get("receptive_field") or "k3=" + ",".join(
        str(k) for k in config.get("k3", []))
    row = {"run": run, "kind": kind, "o2i": o2i, "o2i_label": label,
           "dataset": os.path.basename(config["data_dir"]) if config.get("data_dir")
           else f"noise {config.get('noise')}",
           "image_size": data.get("height"), "train_images": data.get("train_images"),
           "seed": config.get("seed")}
    for key in SETTINGS:
        value = config.get(key)
        row[key] = ",".join(str(v) for v in value) if isinstance(value, list) else value
    row["receptive_field"] = receptive_field
    # the training set's size: --train_size, else the whole training split
    row["train_size"] = config.get("train_size") or data.get("train_images")
    test = summary.get("test", {})
    row.update({key: summary.get(key) for key in METRICS})
    row["test_auc"] = test.get("auc")
    row["fits"] = summary.get("epochs_to_fit") is not None
    # runs from before the stop rule trained every epoch
    row["stopped_epoch"] = summary.get("stopped_epoch", summary.get("epochs"))
    row["stop_reason"] = summary.get("stop_reason", "cap")
    # the epochs the run was given: --epochs, scaled up for a smaller training set
    row["epoch_cap"] = summary.get("epochs")
    row["last_train_gain"] = _last_gain(summary.get("train_accuracy_by_epoch") or [])
    detection = summary.get("detection") or {}
    for name in ("saliency", "evidence"):
        scores = detection.get(name) or {}
        row[f"{name}_ap"] = scores.get("average_precision")
        row[f"{name}_pointing"] = scores.get("pointing_accuracy")
    row["pointing_chance"] = detection.get("pointing_chance")
    return row


def _last_gain(accuracies: list[float]) -> float:
    """The training accuracy the last epoch added (NaN for one epoch, or a summary from
    before summary.json recorded it)."""
    return accuracies[-1] - accuracies[-2] if len(accuracies) >= 2 else np.nan


def o2i_of(kind: str, params: dict[str, Any]) -> tuple[float, str]:
    """(O2I in %, its label) of a dataset from its generation parameters: nMNIST's ratio,
    nCAMELYON's bin (its middle, labelled as the bin); NaN where there is none (noise)."""
    if kind == "nmnist" and "o2i" in params:
        return 100 * params["o2i"], f"{100 * params['o2i']:.3g} %"
    if kind == "ncamelyon" and "o2i_bin" in params:
        low, high = (float(v) for v in params["o2i_bin"].split("-"))
        return (low + high) / 2, f"({params['o2i_bin'].replace('-', ', ')}] %"
    return np.nan, "noise" if kind == "noise" else ""


def aggregate(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each configuration (data x settings)."""
    keys = ["kind", "dataset", "o2i", "o2i_label", *SETTINGS]
    metrics = {"test_accuracy": ["mean", "std"], "val_accuracy": ["mean", "std"],
               "final_train_accuracy": ["mean", "std"], "fits": ["sum"],
               "epochs_to_fit": ["mean"], "seed": ["count"]}
    table = results.astype({k: str for k in SETTINGS}).groupby(keys, dropna=False).agg(metrics)
    table.columns = [f"{metric}_{how}" if how not in ("count", "sum") else
                     {"seed": "seeds", "fits": "fitted"}[metric] for metric, how in table.columns]
    return table.reset_index().sort_values(["kind", "o2i"], ascending=[True, False])


def hold_fixed(results: pd.DataFrame, varied: tuple[str, ...]) -> pd.DataFrame:
    """The rows a figure of the `varied` settings shows: every other setting held at one value
    (the paper's, PREFERRED, where present, else the most common; the receptive field at the
    most common per kind of data, as the paper uses 33 on nMNIST and 9 on nCAMELYON)."""
    rows = results
    for key in SETTINGS:
        if key in varied or rows.empty:
            continue
        if key == "receptive_field":
            # (not groupby.apply: pandas 3 leaves the grouping column out of its result)
            rows = pd.concat([_at_mode(group, key)
                              for _, group in rows.groupby("kind", sort=False)])
            continue
        values = rows[key].astype(str)
        preferred = PREFERRED.get(key)
        if preferred is not None and (values == str(preferred)).any():
            rows = rows[values == str(preferred)]
        else:
            rows = _at_mode(rows, key)
    return rows


def _at_mode(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    values = rows[key].astype(str)
    return rows[values == values.mode().iloc[0]] if len(values) else rows


def fitted_accuracy(rows: pd.DataFrame, metric: str = "test_accuracy") -> tuple[float, float,
                                                                                bool]:
    """Figs. 7, 8 (the paper reports only runs that fit the training data, else chance): the
    mean and standard deviation over the seeds that fit; (0.5, 0, True) when none fit."""
    fitted = rows[rows["fits"]]
    if fitted.empty:
        return CHANCE, 0.0, True
    spread = float(fitted[metric].std()) if len(fitted) > 1 else 0.0  # as aggregate()'s
    return float(fitted[metric].mean()), spread, False


def trained_mean(rows: pd.DataFrame, metric: str = "val_accuracy") -> float:
    """Fig. 6a (footnote 5): the mean over runs above 70 % training accuracy (NaN if none)."""
    trained = rows[rows["final_train_accuracy"] > TRAINED_ACCURACY]
    return float(trained[metric].mean()) if len(trained) else float("nan")


def minimum_train_size(rows: pd.DataFrame, threshold: float) -> dict[str, float]:
    """Figs. 6b / 15: per O2I, the smallest training set whose mean validation accuracy (over
    seeds) reaches `threshold` in some configuration (e.g. capacity); NaN where none does."""
    out = {}
    for label, at_o2i in rows.groupby("o2i_label", sort=False):
        means = at_o2i.astype({k: str for k in SETTINGS if k != "train_size"}).groupby(
            list(SETTINGS), dropna=False)["val_accuracy"].mean().reset_index()
        reached = means[means["val_accuracy"] >= threshold]
        out[label] = float(reached["train_size"].min()) if len(reached) else float("nan")
    return out


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table (pandas' to_markdown needs the `tabulate` package)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])
