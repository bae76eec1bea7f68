"""Verdict rules on hand-made results rows: each rule gives each of its outcomes; the findings
definitions expand to one shared union of runs and name known rules."""

import os

import pandas as pd
import pytest

from needles_tf.experiments.cells import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from needles_tf.experiments.definition import expand, load_members, load_study
from needles_tf.experiments.results import _columns
from needles_tf.experiments.verdicts import RULES, judge
from tests.tiny_runs import WORKTREE

FINDINGS = os.path.join(WORKTREE, "flags", "experiments", "findings")
SPREAD = (-0.01, 0.0, 0.01)  # three seeds around a cell's mean: sd 0.01
LADDER = (19.1, 9.68, 4.79, 2.42)


def cell(o2i, accuracy, fits=True, epochs_to_fit=5, kind="nmnist", seeds=SPREAD, **settings):
    """Three runs (seeds) of one configuration around `accuracy`; `fits`: all, none, or a
    count of the seeds that fit."""
    base = dict(kind=kind, dataset=f"d{o2i}" if kind == "nmnist" else f"noise {o2i}",
                o2i=o2i if kind == "nmnist" else float("nan"), o2i_label=f"{o2i:.3g} %",
                receptive_field=33, blocks="1,1,1,1", width_scale=0.25, pooling="max",
                normalization=False, train_size=5600, class_balance=0.5, optimizer="adam",
                learning_rate=1e-3, lr_milestones="5", epochs=12, batch_size=32)
    base.update(settings)
    fitted = len(seeds) if fits is True else (0 if fits is False else fits)
    return [{**base, "seed": i, "test_accuracy": accuracy + d, "val_accuracy": accuracy + d,
             "final_train_accuracy": 1.0 if i < fitted else 0.8, "fits": i < fitted,
             "epochs_to_fit": epochs_to_fit + i if i < fitted else None,
             "saliency_ap": settings.get("ap", accuracy) + d}
            for i, d in enumerate(seeds)]


def table(*groups):
    return pd.DataFrame([row for group in groups for row in group], columns=[
        *_columns(), "ap"]).drop(columns="ap")


def ladder(accuracies, **settings):
    return [row for o2i, a in zip(LADDER, accuracies) for row in cell(o2i, a, **settings)]


C1 = {"rule": "o2i_limit", "claim": "C1", "high": 0.85, "low": 0.6, "min_o2i": 4}


@pytest.mark.parametrize("accuracies, outcome", [
    ((0.9, 0.8, 0.7, 0.52), REPRODUCED),
    ((0.9, 0.7, 0.8, 0.52), NOT_REPRODUCED),  # rises towards smaller O2I
    ((0.9, 0.9, 0.88, 0.86), INCONCLUSIVE),   # the ladder never reaches the limit
])
def test_o2i_limit(accuracies, outcome):
    assert judge(table(ladder(accuracies)), C1).outcome == outcome
    few = table(ladder(accuracies[:3]))
    assert judge(few, C1).outcome == INCONCLUSIVE  # a ladder too short


@pytest.mark.parametrize("accuracies", [(0.9, 0.8, 0.7, 0.52), (0.9, 0.7, 0.8, 0.52)])
def test_no_verdict_rests_on_cells_cut_off_while_improving(accuracies):
    """A cell whose seeds mostly stopped at the cap, not fit, with their best validation epoch
    the last makes a reproduced or a contradicted claim inconclusive; a plateau does not."""
    def with_stop(best_epoch, stopped=(0, 1, 2)):
        rows = ladder(accuracies, fits=False, stop_reason="cap", best_epoch=3, stopped_epoch=12)
        for row in rows:
            if row["o2i"] == LADDER[1] and row["seed"] in stopped:
                row.update(best_epoch=best_epoch)
        return table(rows)

    plain = judge(table(ladder(accuracies, fits=False)), C1).outcome
    assert plain != INCONCLUSIVE
    assert judge(with_stop(best_epoch=12), C1).outcome == INCONCLUSIVE
    assert f"{LADDER[1]:.3g} %" in judge(with_stop(best_epoch=12), C1).checks[-1][0]
    assert judge(with_stop(best_epoch=7), C1).outcome == plain  # stopped on a plateau
    assert judge(with_stop(best_epoch=12, stopped=(0,)), C1).outcome == plain  # 1 seed of 3


C2 = {"rule": "more_helps", "setting": "train_size", "min_size_thresholds": [0.7, 0.85]}


@pytest.mark.parametrize("grid, outcome", [
    ({(19.1, 1400): 0.86, (19.1, 5600): 0.9, (4.79, 1400): 0.6, (4.79, 5600): 0.75}, REPRODUCED),
    ({(19.1, 1400): 0.93, (19.1, 5600): 0.9, (4.79, 1400): 0.6, (4.79, 5600): 0.75},
     NOT_REPRODUCED),  # more data worse at the large O2I
    ({(19.1, 1400): 0.8, (19.1, 5600): 0.9, (4.79, 1400): 0.72, (4.79, 5600): 0.82},
     INCONCLUSIVE),  # the same gain at both O2I
])
def test_more_helps_with_minimum_training_sets(grid, outcome):
    rows = table(*(cell(o2i, a, train_size=size) for (o2i, size), a in grid.items()))
    assert judge(rows, C2).outcome == outcome


C4 = {"rule": "beats", "setting": "receptive_field", "better": [33], "worse": [9]}


@pytest.mark.parametrize("rf9, outcome", [
    ((0.8, 0.6), REPRODUCED), ((0.95, 0.75), NOT_REPRODUCED), ((0.895, 0.7), INCONCLUSIVE)])
def test_beats(rf9, outcome):
    rows = table(cell(19.1, 0.9), cell(4.79, 0.7), cell(19.1, rf9[0], receptive_field=9),
                 cell(4.79, rf9[1], receptive_field=9))
    assert judge(rows, C4).outcome == outcome


def test_only_the_cells_a_rule_compares_can_make_it_inconclusive():
    """C4 compares RF 9 with RF 33 where both exist: a cut-off cell of the ladder it shows
    (RF 33 alone at 1.2 %) leaves it alone; one at a compared O2I voids it."""
    def rows(cut_o2i):
        groups = [cell(19.1, 0.9), cell(4.79, 0.7), cell(1.2, 0.5),
                  cell(19.1, 0.8, receptive_field=9), cell(4.79, 0.6, receptive_field=9)]
        frame = table(*groups).assign(stop_reason="cap", best_epoch=3, stopped_epoch=12)
        frame.loc[(frame["o2i"] == cut_o2i) & (frame["receptive_field"] == 33),
                  ["fits", "best_epoch"]] = [False, 12]
        return frame

    assert judge(rows(1.2), C4).outcome == REPRODUCED
    assert judge(rows(4.79), C4).outcome == INCONCLUSIVE


C5 = {"rule": "pooling", "best": "max", "alike": 0.05}


@pytest.mark.parametrize("small, large_mean, outcome", [
    ({"max": 0.8, "mean": 0.7, "logsumexp": 0.78}, 0.89, REPRODUCED),
    ({"max": 0.7, "mean": 0.8, "logsumexp": 0.78}, 0.89, NOT_REPRODUCED),
    ({"max": 0.8, "mean": 0.7, "logsumexp": 0.78}, 0.7, NOT_REPRODUCED),  # not alike at large
    ({"max": 0.8, "mean": 0.79, "logsumexp": 0.795}, 0.89, INCONCLUSIVE),
])
def test_pooling(small, large_mean, outcome):
    rows = table(*(cell(19.1, 0.9 if p == "max" else large_mean if p == "mean" else 0.9,
                        pooling=p) for p in small),
                 *(cell(4.79, a, pooling=p) for p, a in small.items()))
    assert judge(rows, C5).outcome == outcome


C8 = {"rule": "detection", "best": "max", "metric": "saliency_ap"}


@pytest.mark.parametrize("max_ap, mean_ap_small, outcome", [
    ((0.9, 0.5), 0.3, REPRODUCED), ((0.5, 0.9), 0.3, NOT_REPRODUCED),
    ((0.9, 0.5), 0.505, INCONCLUSIVE)])
def test_detection(max_ap, mean_ap_small, outcome):
    rows = table(cell(19.1, 0.9, ap=max_ap[0]), cell(4.79, 0.75, ap=max_ap[1]),
                 cell(19.1, 0.9, pooling="mean", ap=0.9),
                 cell(4.79, 0.7, pooling="mean", ap=mean_ap_small))
    assert judge(rows, C8).outcome == outcome


C6 = {"rule": "optimisation", "fit_high": 2 / 3, "fit_low": 1 / 3}


@pytest.mark.parametrize("small_fits, noise_fits, outcome", [
    (0, True, REPRODUCED), (0, False, NOT_REPRODUCED), (3, True, NOT_REPRODUCED),
    (1, True, REPRODUCED), (2, True, INCONCLUSIVE)])
def test_optimisation(small_fits, noise_fits, outcome):
    rows = table(cell(19.1, 0.9, epochs_to_fit=4), cell(19.1, 0.9, pooling="mean",
                                                         epochs_to_fit=4),
                 cell(4.79, 0.6, fits=small_fits, epochs_to_fit=10),
                 cell(4.79, 0.6, pooling="mean", fits=small_fits, epochs_to_fit=10),
                 cell(32, 0.5, kind="noise", fits=noise_fits),
                 cell(32, 0.5, kind="noise", fits=True, pooling="mean"))
    if small_fits == 3:  # fits at the small O2I as often, and faster: contradicted
        rows.loc[rows["o2i"] == 4.79, "epochs_to_fit"] = 1
    assert judge(rows, C6).outcome == outcome


def test_a_noise_run_stopped_at_the_cap_before_memorising_is_cut_off():
    """Noise has random labels: its best validation epoch says nothing; a noise cell whose
    seeds stopped at the cap without fitting makes C6 inconclusive, not 'not reproduced'."""
    rows = table(cell(19.1, 0.9, epochs_to_fit=4), cell(4.79, 0.6, fits=0, epochs_to_fit=10),
                 cell(32, 0.5, kind="noise", fits=False), cell(32, 0.5, kind="noise",
                                                               fits=True, pooling="mean"))
    rows = rows.assign(stop_reason=["cap" if not f else "fit" for f in rows["fits"]],
                       best_epoch=2, stopped_epoch=30)
    verdict = judge(rows, C6)
    assert verdict.outcome == INCONCLUSIVE
    assert "noise 32 max" in verdict.checks[-1][0] and not verdict.checks[-1][1]


@pytest.mark.parametrize("gain, outcome", [(0.03, INCONCLUSIVE), (-0.002, REPRODUCED),
                                           (0.002, REPRODUCED)])  # within the sampling noise
def test_a_run_still_fitting_at_the_cap_is_cut_off_for_c6(gain, outcome):
    """C6 is about fitting: small-O2I runs that stopped at the cap unfit on a validation
    plateau (best epoch 3 of 12) but were still gaining training accuracy (beyond the
    standard error of 80 % over 5,600 images, 0.0053) leave it inconclusive; the accuracy
    claims read their best epoch alone."""
    rows = table(cell(19.1, 0.9, epochs_to_fit=4), cell(4.79, 0.6, fits=0),
                 cell(32, 0.5, kind="noise"))
    unfit = ~rows["fits"]
    rows["stop_reason"] = ["cap" if u else "fit" for u in unfit]
    rows["best_epoch"], rows["stopped_epoch"] = 3, 12
    rows.loc[unfit, "last_train_gain"] = gain
    verdict = judge(rows, C6)
    assert verdict.outcome == outcome
    assert ("4.79 % max" in verdict.checks[-1][0]) == (outcome == INCONCLUSIVE)
    c1_rows = table(ladder((0.9, 0.8, 0.7, 0.52), fits=False)).assign(
        stop_reason="cap", best_epoch=3, stopped_epoch=12, last_train_gain=gain)
    assert judge(c1_rows, C1).outcome == REPRODUCED


C7 = {"rule": "class_balance", "reference": 0.5, "robust": ["max", "logsumexp"]}


@pytest.mark.parametrize("drops, outcome", [
    ({"max": 0.05, "logsumexp": 0.06, "mean": 0.2, "attention": 0.25}, REPRODUCED),
    ({"max": 0.2, "logsumexp": 0.25, "mean": 0.05, "attention": 0.06}, NOT_REPRODUCED),
    ({"max": 0.05, "logsumexp": 0.06, "mean": 0.07, "attention": 0.08}, INCONCLUSIVE),
])
def test_class_balance(drops, outcome):
    rows = table(*(cell(4.79, 0.85, pooling=p) for p in drops),
                 *(cell(4.79, 0.85 - d, pooling=p, class_balance=0.1) for p, d in drops.items()))
    assert judge(rows, C7).outcome == outcome


def test_unknown_rule_is_a_clear_error():
    with pytest.raises(ValueError, match="rule 'nope' is unknown"):
        judge(table(), {"rule": "nope"})


def test_findings_definitions_are_one_union_with_a_verdict_each():
    members = load_members(FINDINGS)
    study, runs = load_study(FINDINGS)
    names = [run.name for run in runs]
    assert len(names) == len(set(names))
    assert len(runs) < sum(len(expand(m)) for m in members)  # shared cells train once
    assert {run.name for m in members for run in expand(m)} == set(names)
    claims = [m.verdict["claim"] for m in members if m.verdict]
    assert sorted(claims) == [f"C{i}" for i in range(1, 9)]
    assert all(m.verdict["rule"] in RULES for m in members if m.verdict)
    assert all(len(m.seeds) >= 3 for m in members)
    c1 = next(m for m in members if m.verdict.get("claim") == "C1")
    c1_runs = {run.name for run in expand(c1)}
    for other in ("C3", "C4", "C5"):  # C1's cells are theirs at max pooling, RF 33, width 1/4
        member = next(m for m in members if m.verdict.get("claim") == other)
        shared = c1_runs & {run.name for run in expand(member)}
        assert shared, other


def test_cells_are_shown_largest_o2i_first():
    from needles_tf.experiments.cells import cells, view

    rows = table(*(cell(o2i, 0.8) for o2i in sorted(LADDER)))
    shown = view(cells(rows, ["o2i"], "test_accuracy"), ["o2i"], "test_accuracy")
    assert list(shown["o2i"]) == [f"{o:.3g} %" for o in sorted(LADDER, reverse=True)]


def test_findings_md_from_a_results_table(tmp_path):
    """needles-report's findings.md: every claim with its verdict and numbers, the cells' fit
    and stop counts, the nCAMELYON claims as not measured; the same from results.csv."""
    from needles_tf.experiments.report import write_report

    rows = table(ladder((0.9, 0.8, 0.7, 0.52)), cell(19.1, 0.9, pooling="mean"),
                 cell(4.79, 0.6, pooling="mean"))
    rows["stop_reason"], rows["stopped_epoch"], rows["best_epoch"] = "fit", 6, 5
    rows["epochs"] = 10
    rows.loc[rows["pooling"] == "mean", "epoch_cap"] = 40  # scaled up: a smaller training set
    members = load_members(FINDINGS)
    written = write_report(str(tmp_path), str(tmp_path / "out"), say=lambda _: None,
                           results=rows, claims=members)
    text = (tmp_path / "out" / "findings.md").read_text()
    outcomes = {v.claim: v.outcome for v in written["verdicts"]}
    assert outcomes["C1"] == REPRODUCED and outcomes["C3"] == INCONCLUSIVE
    assert "| C1 | accuracy is high at large O2I" in text and "**reproduced**" in text
    assert "[x] largest O2I 19.1 %: mean 0.900 >= 0.85" in text
    assert "- Changed after the study began: 2026-12-04, before any noise run" in text  # C6
    assert "[x] no cell compared has most seeds cut off" in text
    # each rule's own description, C6's with its contradictions
    assert "Not reproduced where more runs fit at the smallest O2I than at the largest" in text
    assert "## Every cell" in text and "3 / 0" in text and "5.0 / 6.0 (10)" in text
    assert "5.0 / 6.0 (40)" in text  # the cap the run was given, else --epochs
    assert "Not measured here" in text and "flags/experiments/receptive_field.toml" in text
    assert "![Fig. 4](fig4.png)" in text and (tmp_path / "out" / "fig4.png").exists()
    assert "![Fig. 8](fig8.png)\n\nFig. 8 draws the paper's rule" in text
    # from the written results.csv alone: the same verdicts
    again = pd.read_csv(tmp_path / "out" / "results.csv")
    rewritten = write_report(str(tmp_path), str(tmp_path / "again"), say=lambda _: None,
                             results=again, claims=members)
    assert [(v.claim, v.outcome) for v in rewritten["verdicts"]] == sorted(outcomes.items())


def test_a_study_directory_is_the_union_of_definitions_that_agree(tmp_path):
    from needles_tf.experiments.definition import DefinitionError

    (tmp_path / "data.toml").write_text('[datasets.a]\ngenerator = "nmnist"\ncanvas_size = 32\n')
    common = ('seeds = [0, 1]\ndatasets_file = "data.toml"\n[train]\nepochs = 3\n'
              'pooling = "max"\n')
    (tmp_path / "x.toml").write_text(common + '[grid]\ndataset = ["a"]\npooling = ["max", '
                                     '"mean"]\n[verdict]\nclaim = "X"\n')
    (tmp_path / "y.toml").write_text(common + '[grid]\ndataset = ["a"]\n')
    study, runs = load_study(str(tmp_path))
    assert study.name == tmp_path.name and len(runs) == 4  # y's runs are x's max-pooling runs
    assert [m.verdict for m in load_members(str(tmp_path))] == [{"claim": "X"}, {}]
    (tmp_path / "y.toml").write_text(common.replace("epochs = 3", "epochs = 4")
                                     + '[grid]\ndataset = ["a"]\n')
    with pytest.raises(DefinitionError, match="y.toml: its needles-train flags"):
        load_study(str(tmp_path))
