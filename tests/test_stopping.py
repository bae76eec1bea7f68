"""The stop rule (--stop_after_fit): a run that fits stops after its patience, one that never
fits trains to the cap, and a run killed mid-patience (or after the stopping epoch, before its
summary) resumes to the same end. Real runs: a tiny BagNet memorising 32 noise images."""

import csv
import json
import os

import pytest
from tiny_runs import Interrupt

from needles_tf import run_dir
from needles_tf.experiments import cost
from needles_tf.experiments.definition import expand, load_experiment
from needles_tf.experiments.plan import DONE, PENDING, Plan
from needles_tf.training.stopping import FIT_ACCURACY, fit_streak, stopped_epoch
from needles_tf.training.trainer import TrainConfig, train

PATIENCE = 3


def config(model_dir, **overrides):
    settings = dict(noise="16:32", receptive_field=9, blocks=(1, 1, 1, 1), width_scale=1 / 16,
                    epochs=30, batch_size=8, learning_rate=3e-3, lr_milestones=(100,),
                    optimizer="adam", seed=0, normalization=False, deterministic=True,
                    log_images=0, stop_after_fit=PATIENCE)
    return TrainConfig(None, str(model_dir), **{**settings, **overrides})


def accuracies(model_dir):
    with open(os.path.join(model_dir, run_dir.METRICS)) as f:
        return [float(row["accuracy"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("stop") / "fits"
    return model_dir, train(config(model_dir), verbose=0)


class KillAfterEpoch(Interrupt):
    """A kill right after the epoch's files are committed (runs after the trainer's own)."""

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


def test_the_rule_counts_consecutive_fitting_epochs():
    rows = [{"epoch": e + 1, "accuracy": a} for e, a in
            enumerate([0.5, 0.99, 1.0, 0.98, 0.995, 1.0, 1.0, 1.0])]
    assert stopped_epoch(rows, 3) == 7 and stopped_epoch(rows, 2) == 3
    assert stopped_epoch(rows, 5) is None and stopped_epoch(rows, 0) is None
    assert fit_streak([r["accuracy"] for r in rows[:6]]) == 2 and fit_streak([]) == 0


def test_a_run_that_fits_stops_after_its_patience_and_is_finished(fitted):
    model_dir, summary = fitted
    trained = accuracies(model_dir)
    first = next(i for i, a in enumerate(trained, 1) if a >= FIT_ACCURACY)
    assert len(trained) < 30 and all(a >= FIT_ACCURACY for a in trained[-PATIENCE:])
    assert fit_streak(trained[:-1]) == PATIENCE - 1
    assert summary["stop_reason"] == "fit" and summary["stopped_epoch"] == len(trained)
    assert summary["stop_rule"] == {"fit_accuracy": FIT_ACCURACY, "patience": PATIENCE,
                                    "cap": 30}
    assert summary["epochs"] == 30 and summary["epochs_to_fit"] == first
    assert summary["train_accuracy_by_epoch"] == pytest.approx(trained)
    # finished: a rerun trains nothing more
    mtime = os.path.getmtime(model_dir / run_dir.METRICS)
    assert train(config(model_dir), verbose=0)["stopped_epoch"] == len(trained)
    assert os.path.getmtime(model_dir / run_dir.METRICS) == mtime


def test_a_run_that_never_fits_trains_to_the_cap(tmp_path):
    model_dir = tmp_path / "cap"
    summary = train(config(model_dir, epochs=3, learning_rate=1e-7), verbose=0)
    assert len(accuracies(model_dir)) == 3
    assert summary["stop_reason"] == "cap" and summary["stopped_epoch"] == 3
    assert summary["epochs_to_fit"] is None and summary["stop_rule"]["patience"] == PATIENCE
    # a run from before the flag (no stop_after_fit in its config.json) is the same run, off
    saved = json.loads((model_dir / run_dir.CONFIG).read_text())
    del saved["stop_after_fit"]
    (model_dir / run_dir.CONFIG).write_text(json.dumps(saved))
    assert train(config(model_dir, epochs=3, learning_rate=1e-7, stop_after_fit=0),
                 verbose=0)["stopped_epoch"] == 3


@pytest.mark.parametrize("where", ["mid-patience", "after the stopping epoch"])
def test_a_killed_run_resumes_to_the_same_stop(fitted, tmp_path, where):
    full_dir, full = fitted
    stop = full["stopped_epoch"]
    model_dir = tmp_path / "killed"
    # mid-patience: killed with PATIENCE - 1 fitting epochs committed; or killed once the epoch
    # that stops the run is committed, before the summary is written
    kill = Interrupt(stop - 1) if where == "mid-patience" else KillAfterEpoch(stop)
    with pytest.raises(KeyboardInterrupt):
        train(config(model_dir), verbose=0, extra_callbacks=[kill])
    assert not os.path.exists(model_dir / run_dir.SUMMARY)
    assert len(accuracies(model_dir)) == (stop - 1 if where == "mid-patience" else stop)
    resumed = train(config(model_dir), verbose=0)
    assert accuracies(model_dir) == pytest.approx(accuracies(full_dir), abs=1e-6)
    assert (resumed["stop_reason"], resumed["stopped_epoch"]) == ("fit", stop)
    assert resumed["train_accuracy_by_epoch"] == pytest.approx(accuracies(full_dir), abs=1e-6)


def test_the_sweep_counts_a_stopped_run_done_and_costs_the_others_at_their_cap(fitted,
                                                                              tmp_path):
    model_dir, _ = fitted
    definition = tmp_path / "stop.toml"
    definition.write_text('seeds = [0, 1]\n[train]\nreceptive_field = 9\nepochs = 30\n'
                          'stop_after_fit = 3\n[grid]\nnoise = ["16:32"]\n')
    plan = Plan(load_experiment(str(definition)), str(tmp_path / "root"))
    stopped, pending = expand(plan.experiment)
    os.makedirs(os.path.dirname(plan.model_dir(stopped)))
    os.symlink(model_dir, plan.model_dir(stopped))
    assert (plan.state(stopped), plan.state(pending)) == (DONE, PENDING)
    estimate = cost.estimate(plan, [pending], images_per_second=100)
    # at most: 30 epochs of 32 training and 32 validation images, then val and test once
    assert estimate["images"] == 30 * 32 + 30 * 32 + 32 + 32
    assert estimate["may_stop_early"] == 1
