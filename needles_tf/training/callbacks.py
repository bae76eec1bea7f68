"""Keras callbacks of a training run: divergence guard, validation metrics, the per-epoch record
(metrics.csv + best model) and the resumable checkpoint. Each writes atomically."""

from __future__ import annotations

import csv
import glob
import math
import os
import threading
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from needles_tf import atomic, run_dir
from needles_tf.evaluation.evaluate import logits_function, predict_probabilities
from needles_tf.evaluation.metrics import classification_metrics


def _finite_loss(logs: dict | None) -> bool:
    return logs is not None and math.isfinite(float(logs.get("loss", math.nan)))


class NanGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite batch loss; the epoch is then not recorded."""

    def __init__(self):
        super().__init__()
        self.diverged_at: int | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not _finite_loss(logs) and self.diverged_at is None:
            self.diverged_at = self._epoch
            self.model.stop_training = True


class StopWhenSet(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the end of the batch during which `flag` got set.

    A Ctrl-C handler that sets the flag (bin/common's) stops training after the batch even
    where its KeyboardInterrupt got lost on the way (caught and dropped by code that the
    binaries' re-sending of dropped interrupts does not see).
    """

    def __init__(self, flag: threading.Event):
        super().__init__()
        self.flag = flag

    def on_train_batch_end(self, batch, logs=None):
        if self.flag.is_set():
            raise KeyboardInterrupt


class EpochTimer(keras.callbacks.Callback):
    """Adds the epoch's training time and images/s (validation excluded) to the logs."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        logs["train_seconds"] = seconds
        logs["images_per_second"] = self.images_per_epoch / seconds


class ClassifierCallback(keras.callbacks.Callback):
    """A callback that works on `classifier`, the model that is saved, where `fit` trains a
    twin that shares its weights (models/remat.py); on the fitted model where none is given."""

    def __init__(self, classifier: keras.Model | None = None):
        super().__init__()
        self.classifier = classifier

    def set_model(self, model):
        super().set_model(model if self.classifier is None else self.classifier)


class ValidationMetrics(ClassifierCallback):
    """val_loss, val_accuracy, val_precision, val_recall, val_auc after each epoch, in one pass."""

    def __init__(self, dataset: tf.data.Dataset, classifier: keras.Model | None = None,
                 tile_size: int | None = None):
        super().__init__(classifier)
        self.dataset = dataset
        self.tile_size = tile_size
        self._forward = None  # traced once, at the first validation

    def on_epoch_end(self, epoch, logs=None):
        if not _finite_loss(logs):
            return
        if self._forward is None:
            self._forward = logits_function(self.model, self.dataset.element_spec[0],
                                            self.tile_size)
        labels, probabilities = predict_probabilities(self.model, self.dataset,
                                                      forward=self._forward)
        p_true = np.where(labels == 1, probabilities, 1.0 - probabilities)
        metrics = classification_metrics(labels, probabilities)
        logs["val_loss"] = float(-np.mean(np.log(np.clip(p_true, 1e-7, 1.0))))
        for key in ("accuracy", "precision", "recall", "auc"):
            value = metrics[key]
            logs[f"val_{key}"] = math.nan if value is None else float(value)


def read_history(path: str) -> list[dict[str, Any]]:
    """Rows of metrics.csv as dicts of floats (epoch as int); [] when there is none."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def selection_key(row: dict[str, Any]) -> tuple[float, float]:
    """How epochs rank for the best model: validation accuracy, ties broken by the lower
    validation loss. A small validation set ties often (200 images: steps of 0.5 %), and the
    first of tied epochs is often an early, lucky one."""
    accuracy, loss = row.get("val_accuracy", math.nan), row.get("val_loss", math.nan)
    return (-math.inf if math.isnan(accuracy) else accuracy,
            -math.inf if math.isnan(loss) else -loss)


class EpochRecorder(ClassifierCallback):
    """Rewrites metrics.csv with every finished epoch and saves the best validation model.

    `history` holds the rows of the epochs before the first one this run trains (on resume);
    each row's wall_seconds counts from `start_time` (moved back by the earlier sessions' time).
    """

    def __init__(self, model_dir: str, history: list[dict[str, Any]], start_time: float,
                 classifier: keras.Model | None = None):
        super().__init__(classifier)
        self.model_dir = model_dir
        self.checkpoint_dir = os.path.join(model_dir, run_dir.CHECKPOINT_DIR)
        self.pending_best: str | None = None
        self.start_time = start_time
        self.history = list(history)
        self.best = max((selection_key(row) for row in self.history),
                        default=(-math.inf, -math.inf))

    def on_epoch_end(self, epoch, logs=None):
        if not _finite_loss(logs):
            return
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in sorted(logs.items())},
               "wall_seconds": round(time.time() - self.start_time, 1)}
        self.history = [r for r in self.history if r["epoch"] < row["epoch"]] + [row]
        self._write_csv()
        if selection_key(row) > self.best:
            self.best = selection_key(row)
            # pending until EpochCheckpoint commits this epoch (then it becomes best.keras):
            # a kill before that commit must not leave the model of a discarded epoch
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            self.pending_best = f"best-epoch-{epoch + 1:05d}.keras"
            with atomic.atomic_path(os.path.join(self.checkpoint_dir, self.pending_best),
                                    suffix=".keras") as tmp:
                self.model.save(tmp)

    def _write_csv(self):
        path = os.path.join(self.model_dir, run_dir.METRICS)
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, keys, restval="")
            writer.writeheader()
            writer.writerows(self.history)


class EpochCheckpoint(ClassifierCallback):
    """Weights and optimizer state after every finished epoch, for resuming; commits the epoch.

    state.json names the weights file of the last finished epoch (and the recorder's new best
    model, if the epoch made one); it is replaced only after those files are complete, so a kill
    at any moment leaves a consistent checkpoint. The best model is moved to best.keras after
    the commit (and again by `restore` if a kill came in between).
    """

    STATE = run_dir.CHECKPOINT_STATE

    def __init__(self, directory: str, recorder: EpochRecorder | None = None,
                 classifier: keras.Model | None = None):
        super().__init__(classifier)
        self.directory = directory
        self.recorder = recorder

    def on_epoch_end(self, epoch, logs=None):
        if not _finite_loss(logs):
            return
        os.makedirs(self.directory, exist_ok=True)
        previous = self.saved_state(self.directory)
        name = f"epoch-{epoch + 1:05d}.weights.h5"
        self.model.save_weights(os.path.join(self.directory, name))
        state = {"epoch": epoch + 1, "weights": name}
        if self.recorder is not None and self.recorder.pending_best:
            state["best_model"], self.recorder.pending_best = self.recorder.pending_best, None
        atomic.write_json(os.path.join(self.directory, self.STATE), state)
        if previous and previous["weights"] != name:
            os.remove(os.path.join(self.directory, previous["weights"]))
        self.publish_best(self.directory)

    @classmethod
    def publish_best(cls, directory: str) -> None:
        """Moves the committed epoch's best model to best.keras; removes uncommitted ones."""
        state = cls.saved_state(directory) or {}
        for path in glob.glob(os.path.join(glob.escape(directory), "best-epoch-*.keras")):
            if os.path.basename(path) == state.get("best_model"):
                os.replace(path, os.path.join(os.path.dirname(directory), run_dir.BEST_MODEL))
            else:
                os.remove(path)

    @classmethod
    def saved_state(cls, directory: str) -> dict | None:
        """{"epoch": finished epochs, "weights": file name} of the last checkpoint, or None."""
        path = os.path.join(directory, cls.STATE)
        return run_dir.read_json(path) if os.path.exists(path) else None

    @classmethod
    def load(cls, model: keras.Model, directory: str, epoch: int) -> None:
        """Loads the checkpoint of `epoch` finished epochs into a compiled model whose optimizer
        is built (a worker of a multi-worker run reads the chief's).

        Raises:
          RuntimeError: the checkpoint holds another epoch, or none.
        """
        state = cls.saved_state(directory)
        if state is None or state["epoch"] != epoch:
            found = "none" if state is None else f"epoch {state['epoch']}"
            raise RuntimeError(f"{directory}: expected the checkpoint of epoch {epoch}, found "
                               f"{found}")
        model.load_weights(os.path.join(directory, state["weights"]))
