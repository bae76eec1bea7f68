"""Training runs on tiny nMNIST: learning, resume with identical history, run directory
contents, TensorBoard events, divergence, strategies, bad input."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tiny_runs import Interrupt

from needles_tf import run_dir
from needles_tf.evaluation.evaluate import evaluate
from needles_tf.generation import nmnist
from needles_tf.models import build_classifier
from needles_tf.training.loop import TrainLoop
from needles_tf.training.optimizers import make_optimizer
from needles_tf.training.schedule import scale_epochs, step_learning_rate
from needles_tf.training.trainer import TrainConfig, TrainingError, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Digits alone on a 32 x 32 canvas: '3 or not' is learnable in a few epochs."""
    out = str(tmp_path_factory.mktemp("nmnist_easy"))
    nmnist.generate_nmnist(out, canvas_size=32, num_clutter=0, num_shards=2, progress=False)
    return out


def config(data_dir, model_dir, **overrides):
    settings = dict(receptive_field=33, blocks=(1, 1, 1, 1), width_scale=1 / 8, epochs=4,
                    batch_size=16, learning_rate=2e-3, lr_milestones=(3,), optimizer="adam", seed=3,
                    normalization=False, deterministic=True, log_images=4)
    return TrainConfig(str(data_dir), str(model_dir), **{**settings, **overrides})


def history(model_dir):
    with open(os.path.join(model_dir, run_dir.METRICS)) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("run") / "full"
    return model_dir, train(config(data_dir, model_dir), verbose=0)


def test_a_short_run_learns(finished_run):
    model_dir, summary = finished_run
    rows = history(model_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert summary["test_accuracy"] > 0.62 and summary["val_accuracy"] > 0.62  # chance: 0.5
    assert float(rows[-1]["learning_rate"]) == pytest.approx(2e-4)
    for key in ("val_precision", "val_recall", "val_auc", "images_per_second"):
        assert key in rows[0]


def test_summary_and_run_directory(finished_run):
    model_dir, summary = finished_run
    on_disk = run_dir.read_summary(model_dir)
    assert on_disk["status"] == "finished" and on_disk["best_epoch"] == summary["best_epoch"]
    tested = evaluate(run_dir.load_best_model(model_dir), on_disk["config"]["data_dir"], "test")
    assert on_disk["test"]["accuracy"] == pytest.approx(tested["accuracy"])
    best = max(history(model_dir), key=lambda r: float(r["val_accuracy"]))
    assert on_disk["best_epoch"] == int(best["epoch"])
    assert on_disk["val_accuracy"] == pytest.approx(float(best["val_accuracy"]))
    assert on_disk["parameters"] == run_dir.load_best_model(model_dir).count_params()
    assert on_disk["config"]["k3"] == [1, 1, 1, 1] and on_disk["config"]["seed"] == 3
    assert set(on_disk["test"]) >= {"accuracy", "precision", "recall", "auc",
                                    "confusion_matrix"}
    assert sum(map(sum, on_disk["test"]["confusion_matrix"])) == on_disk["test"]["count"]
    assert not os.listdir(os.path.join(model_dir, run_dir.CHECKPOINT_DIR))


def test_tensorboard_events_load_with_tensorboard(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model_dir, _ = finished_run
    logs = os.path.join(model_dir, run_dir.LOG_DIR)
    train_events = EventAccumulator(os.path.join(logs, "train"),
                                    size_guidance={"tensors": 0}).Reload()
    val_events = EventAccumulator(os.path.join(logs, "validation"),
                                  size_guidance={"tensors": 0}).Reload()
    tags = train_events.Tags()["tensors"]
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "inputs"} <= set(tags)
    assert len(train_events.Tensors("epoch_loss")) == 4
    assert "epoch_accuracy" in val_events.Tags()["tensors"]


def test_resume_gives_the_same_history(data_dir, finished_run, tmp_path):
    full_dir, full = finished_run
    model_dir = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(config(data_dir, model_dir), verbose=0, extra_callbacks=[Interrupt(2)])
    assert not os.path.exists(model_dir / run_dir.SUMMARY)  # not looking finished
    assert [int(r["epoch"]) for r in history(model_dir)] == [1, 2]
    resumed = train(config(data_dir, model_dir), verbose=0)
    for a, b in zip(history(full_dir), history(model_dir), strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), (a["epoch"], key)
    assert resumed["test_accuracy"] == pytest.approx(full["test_accuracy"])
    # a finished run is not trained again
    mtime = os.path.getmtime(model_dir / run_dir.METRICS)
    assert train(config(data_dir, model_dir), verbose=0)["best_epoch"] == resumed["best_epoch"]
    assert os.path.getmtime(model_dir / run_dir.METRICS) == mtime


class WeightsAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = [np.array(w) for w in self.model.get_weights()]


def test_init_from_starts_at_another_runs_best_model(data_dir, finished_run, tmp_path):
    source_dir, _ = finished_run
    start = WeightsAtStart()
    train(config(data_dir, tmp_path / "warm", epochs=1, init_from=str(source_dir)), verbose=0,
          extra_callbacks=[start])
    best = run_dir.load_best_model(source_dir).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(start.weights, best, strict=True))
    with pytest.raises(TrainingError, match="init_from .* does not match"):
        train(config(data_dir, tmp_path / "other", width_scale=1 / 16,
                     init_from=str(source_dir)), verbose=0)


def test_runs_from_before_blocks_are_the_same_run_and_depth_is_a_setting(finished_run, tmp_path):
    """A config.json written before --blocks existed means ResNet-50's depth; another depth
    is another run."""
    source_dir, summary = finished_run
    saved = run_dir.read_json(os.path.join(source_dir, run_dir.CONFIG))
    model_dir = tmp_path / "old"
    model_dir.mkdir()
    del saved["blocks"]
    saved["model_dir"] = str(model_dir)
    for name, content in ((run_dir.CONFIG, saved), (run_dir.SUMMARY, summary)):
        (model_dir / name).write_text(json.dumps(content))
    same = TrainConfig(**saved)
    assert train(same, verbose=0) == summary  # finished: returned, not trained again
    with pytest.raises(TrainingError, match=r"blocks: \[3, 4, 6, 3\] -> \[1, 1, 1, 1\]"):
        train(TrainConfig(**{**saved, "blocks": (1, 1, 1, 1)}), verbose=0)


class PoisonWeights(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            kernel = self.model.get_layer("logits").kernel
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    model_dir = tmp_path / "nan"
    with pytest.raises(TrainingError, match="NaN.*epoch 2.*checkpoint \\(epoch 1\\)"):
        train(config(data_dir, model_dir, train_size=64, reference_size=0), verbose=0,
              extra_callbacks=[PoisonWeights()])
    state = json.loads((model_dir / run_dir.CHECKPOINT_DIR / "state.json").read_text())
    assert state["epoch"] == 1
    assert [int(r["epoch"]) for r in history(model_dir)] == [1]
    assert not os.path.exists(model_dir / run_dir.SUMMARY)


def test_accumulating_micro_batches_gives_the_update_of_the_whole_batch():
    """The training loop's step over 16 images: in one pass, and as 4 micro-batches of 4 whose
    gradients are summed before the one update."""
    rng = np.random.default_rng(0)
    images = rng.random((16, 24, 24, 1)).astype("float32")
    labels = np.tile([0, 1], 8).astype("int32")
    strategy = tf.distribute.get_strategy()

    def update(micro_batch: int) -> np.ndarray:
        keras.utils.set_random_seed(5)
        model = build_classifier(1, receptive_field=9, width_scale=1 / 16, blocks=(1, 1, 1, 1))
        # SGD: the update is the gradient itself, so round-off stays round-off (RMSprop's first
        # step, lr * g / sqrt(g^2), turns the sign of a near-zero gradient into a full step)
        optimizer = make_optimizer("sgd", 1e-2)
        optimizer.build(model.trainable_variables)
        before = np.concatenate([np.ravel(w) for w in model.get_weights()])
        loop = TrainLoop(model, optimizer, strategy, micro_batch, len(images) // micro_batch)
        batches = iter(tf.data.Dataset.from_tensors((images, labels)))
        loss, correct, count = loop.step(batches).numpy()
        assert count == 16 and 0 <= correct <= 16 and loss > 0
        return np.concatenate([np.ravel(w) for w in model.get_weights()]) - before, loss

    (whole, whole_loss), (accumulated, accumulated_loss) = update(16), update(4)
    assert np.linalg.norm(whole) > 0
    assert np.linalg.norm(accumulated - whole) <= 1e-4 * np.linalg.norm(whole)
    assert accumulated_loss == pytest.approx(whole_loss, rel=1e-5)


def test_schedule_and_epoch_scaling():
    assert scale_epochs(200, (80, 120, 160), 1400) == (1600, (640, 960, 1280))
    assert scale_epochs(200, (80,), None) == (200, (80,))
    assert scale_epochs(200, (80,), 22552) == (200, (80,))
    lr = step_learning_rate(5e-5, (80, 120, 160), 0.1)
    assert [lr(e) for e in (0, 79, 80, 120, 199)] == pytest.approx([5e-5, 5e-5, 5e-6, 5e-7,
                                                                   5e-8])
    with pytest.raises(ValueError, match="lr_milestones"):
        step_learning_rate(1e-3, (120, 80), 0.1)


def test_bad_input_gets_clear_errors(data_dir, finished_run, tmp_path):
    with pytest.raises(ValueError, match="dataset.json"):
        train(config(tmp_path / "missing", tmp_path / "r1"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="dataset.json"):
        train(config(empty, tmp_path / "r2"))
    with pytest.raises(ValueError, match="train_size"):
        train(config(data_dir, tmp_path / "r3", train_size=10**6, reference_size=0))
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        train(config(data_dir, tmp_path / "r4", micro_batch_size=5))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(TrainingError, match="not writable"):
        train(config(data_dir, blocker / "run"))
    partial = tmp_path / "other"  # one finished epoch: the run is kept from then on
    with pytest.raises(KeyboardInterrupt):
        train(config(data_dir, partial, train_size=64, reference_size=0), verbose=0,
              extra_callbacks=[Interrupt(1)])
    with pytest.raises(TrainingError, match="other settings.*width_scale"):
        train(config(data_dir, partial, train_size=64, reference_size=0, width_scale=1 / 4))


def test_binary_reports_bad_input_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    result = subprocess.run(
        [sys.executable, "-m", "needles_tf.bin.train", f"--data_dir={tmp_path}/nothing",
         f"--model_dir={tmp_path}/run"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "needles-train: error:" in result.stderr and "nothing" in result.stderr
