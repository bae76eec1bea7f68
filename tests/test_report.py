"""needles-report's rules and files, on hand-made summary.json files (no training)."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from needles_tf.experiments import figures, results
from needles_tf.experiments.report import write_report


def summary(root, name, *, canvas=64, seed=0, test=0.9, val=None, train=1.0, fit_epoch=3,
            kind="nmnist", **config):
    """Writes <root>/runs/<name>/summary.json as needles-train would, with chosen metrics."""
    settings = {"data_dir": f"/data/nmnist_{canvas}", "receptive_field": 33, "k3": [1, 1, 1, 1],
                "blocks": [3, 4, 6, 3], "width_scale": 1.0, "pooling": "max",
                "normalization": True, "train_size": None, "class_balance": 0.5,
                "optimizer": "rmsprop", "learning_rate": 5e-5, "lr_milestones": [80, 120, 160],
                "epochs": 200, "batch_size": 32, "seed": seed, "noise": None, **config}
    params = {"o2i": 28 * 28 / canvas ** 2} if kind == "nmnist" else {"o2i_bin": "1-10"}
    data = {"kind": kind, "height": canvas, "width": canvas, "channels": 1,
            "train_images": 11276, "params": params}
    body = {"status": "finished", "config": settings, "dataset": data, "epochs": 200,
            "parameters": 1000, "best_epoch": 5, "val_accuracy": test if val is None else val,
            "test_accuracy": test, "test": {"accuracy": test, "auc": test},
            "epochs_to_fit": fit_epoch, "final_train_accuracy": train, "wall_seconds": 10.0,
            "train_images_per_second": 100.0}
    if kind == "nmnist":  # needles-train --score_detection: the saliency maximum as a detector
        scores = {"average_precision": test - 0.2, "pointing_accuracy": test}
        body["detection"] = {"saliency": scores, "evidence": scores,
                             "pointing_chance": params["o2i"]}
    path = os.path.join(root, "runs", name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump(body, f)


def test_fitted_runs_rule_chance_and_hatching(tmp_path):
    """Figs. 7 / 8: mean over the seeds that fit; none fits -> chance, hatched."""
    root = str(tmp_path)
    summary(root, "a/0", seed=0, test=0.9, fit_epoch=4)
    summary(root, "a/1", seed=1, test=0.7, fit_epoch=None, train=0.8)  # not fit: left out
    summary(root, "b/0", seed=0, test=0.6, fit_epoch=None, train=0.6, receptive_field=9)
    table = results.collect(root)
    assert len(table) == 3 and table["fits"].tolist() == [True, False, False]
    assert results.fitted_accuracy(table[table["receptive_field"] == 33]) == (0.9, 0.0, False)
    assert results.fitted_accuracy(table[table["receptive_field"] == 9]) == (0.5, 0.0, True)


def test_last_train_gain_from_the_training_accuracies(tmp_path):
    """results.csv's last_train_gain: what the last epoch added to the training accuracy
    (NaN for a summary from before summary.json recorded the accuracies)."""
    root = str(tmp_path)
    for name, accuracies in {"old": None, "new": [0.5, 0.75, 0.8], "one": [0.8]}.items():
        summary(root, name, fit_epoch=None, train=0.8)
        path = os.path.join(root, "runs", name, "summary.json")
        with open(path) as f:
            body = json.load(f)
        with open(path, "w") as f:
            json.dump({**body, **({"train_accuracy_by_epoch": accuracies} if accuracies
                                  else {})}, f)
    gains = results.collect(root).set_index("run")["last_train_gain"]
    assert gains[os.path.join("runs", "new")] == pytest.approx(0.05)
    assert np.isnan(gains[os.path.join("runs", "old")])
    assert np.isnan(gains[os.path.join("runs", "one")])  # one epoch: no gain to tell


def test_fig17_draws_detection_per_o2i_and_pooling(tmp_path):
    """Fig. 17: a bar per O2I and pooling in each panel (AP, pointing), from the runs that
    scored detection; none without scores."""
    root = str(tmp_path)
    for canvas in (64, 128):
        for pooling in ("max", "mean"):
            for seed in (0, 1):
                summary(root, f"{canvas}/{pooling}/{seed}", canvas=canvas, seed=seed,
                        test=0.9 - canvas / 1000 - 0.01 * seed, pooling=pooling)
    table = results.collect(root)
    figure = figures.fig17(table)
    ap, pointing = figure.axes
    heights = sorted(round(bar.get_height(), 4) for bar in ap.patches)
    assert len(ap.patches) == len(pointing.patches) == 4
    assert heights == [0.567, 0.567, 0.631, 0.631]  # test - 0.2, the mean of the two seeds
    assert figures.fig17(table.assign(saliency_ap=np.nan)) is None


def test_trained_mean_and_minimum_train_size(tmp_path):
    """Fig. 6a averages runs above 70 % training accuracy; Fig. 6b takes, per O2I, the
    smallest size whose mean validation accuracy reaches the threshold in any capacity."""
    root = str(tmp_path)
    for size, vals in {1400: (0.6, 0.66), 2819: (0.72, 0.8), 5638: (0.9, 0.88)}.items():
        for seed, val in enumerate(vals):
            summary(root, f"s{size}/{seed}", seed=seed, val=val, train_size=size)
    summary(root, "s1400/wide", seed=0, val=0.75, train_size=1400, width_scale=2.0)
    summary(root, "s1400/wide1", seed=1, val=0.69, train_size=1400, width_scale=2.0)
    summary(root, "small/0", canvas=256, seed=0, val=0.95, train_size=1400, train=0.5)
    table = results.collect(root)
    at64 = table[table["o2i_label"] == "19.1 %"]
    sizes70 = results.minimum_train_size(at64, 0.70)
    sizes85 = results.minimum_train_size(at64, 0.85)
    assert sizes70["19.1 %"] == 1400  # the wide model's mean (0.72) reaches 70 % at 1400
    assert sizes85["19.1 %"] == 5638
    assert np.isnan(results.minimum_train_size(at64, 0.95)["19.1 %"])
    small = table[table["o2i_label"] == "1.2 %"]
    assert np.isnan(results.trained_mean(small))  # its only run trained to 50 %: left out
    mixed = pd.concat([small, at64[at64["train_size"] == 5638]])
    assert results.trained_mean(mixed) == pytest.approx(0.89)


def test_report_files_and_figures(tmp_path):
    """The report of a small grid: tables, the figures it allows (PNG and PDF), report.md."""
    root = str(tmp_path / "study")
    for canvas, base in ((64, 0.95), (128, 0.85), (256, 0.7)):
        for seed in (0, 1):
            for rf in (9, 33):
                fits = not (canvas == 256 and rf == 9)
                summary(root, f"{canvas}/rf{rf}/{seed}", canvas=canvas, seed=seed,
                        test=base - 0.02 * seed - (0.1 if rf == 9 else 0),
                        receptive_field=rf, fit_epoch=5 if fits else None,
                        train=1.0 if fits else 0.6)
    out = str(tmp_path / "report")
    written = write_report(root, out, say=lambda line: None)
    assert written["runs"] == 12
    assert {"4", "7", "9a", "9b"} <= set(written["figures"])
    assert "5b" not in written["figures"]  # one capacity only: nothing to draw
    for paths in written["figures"].values():
        assert all(os.path.getsize(p) > 1000 for p in paths)
    table = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(table) == 12 and {"o2i", "test_accuracy", "fits", "seed"} <= set(table.columns)
    means = pd.read_csv(os.path.join(out, "aggregates.csv"))
    row = means[(means["o2i_label"] == "19.1 %") & (means["receptive_field"].astype(str) == "33")]
    assert row["test_accuracy_mean"].item() == pytest.approx(0.94)
    assert row["seeds"].item() == 2
    report = open(os.path.join(out, "report.md")).read()
    assert "![Fig. 7](fig7.png)" in report and "| 19.1 % |" in report
    assert "0/2" in report  # RF 9 at O2I 1.2 %: no seed fits


def test_hold_fixed_prefers_the_papers_settings(tmp_path):
    root = str(tmp_path)
    summary(root, "max", pooling="max", test=0.9)
    for i in range(3):
        summary(root, f"mean{i}", pooling="mean", seed=i, test=0.6)
    table = results.collect(root)
    assert set(results.hold_fixed(table, ())["pooling"]) == {"max"}  # the paper's, not the mode
    assert len(results.hold_fixed(table, ("pooling",))) == 4
    assert figures.fig8(table) is not None  # two poolings to compare
    assert figures.fig4(table) is None  # one O2I ratio: no curve


def test_every_figure_draws_from_a_study_that_varies_its_factors(tmp_path):
    """A hand-made study shaped like the paper's (each experiment's slice around the paper's
    defaults): every figure of the report is drawn."""
    root = str(tmp_path / "study")
    rng = np.random.default_rng(0)
    n = 0

    def run(canvas, **config):
        nonlocal n
        n += 1
        acc = float(np.clip(1.0 - 0.1 * np.log2(canvas / 64) + rng.normal(0, 0.02), 0.5, 1))
        summary(root, f"r{n}", canvas=canvas, test=acc, val=acc, train=min(1.0, acc + 0.1),
                fit_epoch=5 if acc > 0.7 else None, **config)

    for canvas in (64, 128, 256):
        for seed in (0,):
            run(canvas, seed=seed)
            for pooling in ("mean", "logsumexp"):
                run(canvas, seed=seed, pooling=pooling)
            for rf in (9, 177):
                run(canvas, seed=seed, receptive_field=rf)
            for width in (0.25, 2.0):
                run(canvas, seed=seed, width_scale=width)
            for size in (1400, 5638):
                for pooling in ("max", "mean"):
                    run(canvas, seed=seed, train_size=size, pooling=pooling)
                run(canvas, seed=seed, train_size=size, width_scale=0.25)
            if canvas == 256:
                for balance in (0.1, 0.9):
                    for pooling in ("max", "mean"):
                        run(canvas, seed=seed, class_balance=balance, pooling=pooling)
        summary(root, f"cam{canvas}", kind="ncamelyon", canvas=canvas, test=0.8)
        summary(root, f"cam{canvas}w", kind="ncamelyon", canvas=canvas, test=0.7,
                width_scale=0.5)
    written = write_report(root, str(tmp_path / "report"), say=lambda line: None)
    assert set(written["figures"]) == set(figures.FIGURES)
