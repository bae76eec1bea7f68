"""Keras callbacks of a training run: divergence guard, validation metrics, the per-epoch record
(metrics.csv + best model) and the resumable checkpoint. Each writes atomically."""

from __future__ import annotations

import csv
import math
import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from needles_tf import atomic, run_dir
from needles_tf.evaluation.evaluate import predict_probabilities
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


class ValidationMetrics(keras.callbacks.Callback):
    """val_loss, val_accuracy, val_precision, val_recall, val_auc after each epoch, in one pass."""

    def __init__(self, dataset: tf.data.Dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_end(self, epoch, logs=None):
        if not _finite_loss(logs):
            return
        labels, probabilities = predict_probabilities(self.model, self.dataset)
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


class EpochRecorder(keras.callbacks.Callback):
    """Rewrites metrics.csv with every finished epoch and saves the best validation model.

    `history` holds the rows of the epochs before the first one this run trains (on resume).
    """

    def __init__(self, model_dir: str, history: list[dict[str, Any]],
                 monitor: str = "val_accuracy"):
        super().__init__()
        self.model_dir = model_dir
        self.history = list(history)
        self.monitor = monitor
        self.best = max((row[monitor] for row in self.history), default=-math.inf)

    def on_epoch_end(self, epoch, logs=None):
        if not _finite_loss(logs):
            return
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in sorted(logs.items())}}
        self.history = [r for r in self.history if r["epoch"] < row["epoch"]] + [row]
        self._write_csv()
        if row.get(self.monitor, -math.inf) > self.best:
            self.best = row[self.monitor]
            best = os.path.join(self.model_dir, run_dir.BEST_MODEL)
            with atomic.atomic_path(best, suffix=".keras") as tmp:
                self.model.save(tmp)

    def _write_csv(self):
        path = os.path.join(self.model_dir, run_dir.METRICS)
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, keys, restval="")
            writer.writeheader()
            writer.writerows(self.history)


class EpochCheckpoint(keras.callbacks.Callback):
    """Weights and optimizer state after every finished epoch, for resuming.

    state.json names the weights file of the last finished epoch; it is replaced only after
    that file is complete, so a kill at any moment leaves a consistent checkpoint.
    """

    STATE = "state.json"

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def on_epoch_end(self, epoch, logs=None):
        if not _finite_loss(logs):
            return
        os.makedirs(self.directory, exist_ok=True)
        previous = self.saved_state(self.directory)
        name = f"epoch-{epoch + 1:05d}.weights.h5"
        self.model.save_weights(os.path.join(self.directory, name))
        atomic.write_json(os.path.join(self.directory, self.STATE),
                                  {"epoch": epoch + 1, "weights": name})
        if previous and previous["weights"] != name:
            os.remove(os.path.join(self.directory, previous["weights"]))

    @classmethod
    def saved_state(cls, directory: str) -> dict | None:
        """{"epoch": finished epochs, "weights": file name} of the last checkpoint, or None."""
        path = os.path.join(directory, cls.STATE)
        return run_dir.read_json(path) if os.path.exists(path) else None

    @classmethod
    def restore(cls, model: keras.Model, directory: str) -> int:
        """Loads the last checkpoint into a compiled model; returns the epochs already done."""
        state = cls.saved_state(directory)
        if state is None:
            return 0
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(directory, state["weights"]))
        return state["epoch"]
