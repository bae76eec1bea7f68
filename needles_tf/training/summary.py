"""The end of a run: its best model evaluated on val and test, summary.json written."""

from __future__ import annotations

import os
import time
from typing import Any

import keras
import tensorflow as tf

from needles_tf import atomic, provenance, run_dir
from needles_tf.training import callbacks as cb
from needles_tf.training import stopping
from needles_tf.training.config import TrainConfig
from needles_tf.training.data import describe, evaluate_split


def finish_run(config: TrainConfig, model: keras.Model, history: list[dict], policy: str,
            strategy: tf.distribute.Strategy, epochs: int, images_per_epoch: int,
            start_time: float, batch_size: int) -> dict[str, Any]:
    """Evaluates the best model on val and test (at the training's micro-batch size, which is
    known to fit) and writes summary.json."""
    best = max(history, key=cb.selection_key)
    if best["epoch"] != history[-1]["epoch"]:  # else the model holds the best weights already
        # the best epoch's weights into the trained model: its evaluation function is already
        # traced, where a model loaded from the file would be rebuilt and traced again
        model.load_weights(run_dir.best_model_path(config.model_dir))
    results = {split: evaluate_split(model, config, split, batch_size)
               for split in ("val", "test")}
    detection = _detection(model, config, batch_size) if config.score_detection else None
    fit_epoch = next((row["epoch"] for row in history
                      if row["accuracy"] >= stopping.FIT_ACCURACY), None)
    train_seconds = sum(row["train_seconds"] for row in history)
    images = images_per_epoch * len(history)
    summary = {
        "status": "finished",
        "config": config.to_json(),
        "dataset": describe(config),
        "epochs": epochs,
        **stopping.describe(config.stop_after_fit, history, epochs),
        "parameters": model.count_params(),
        "precision": policy,
        "replicas": strategy.num_replicas_in_sync,
        "provenance": provenance.describe(strategy),
        "best_epoch": best["epoch"],
        "val_accuracy": results["val"]["accuracy"],
        "test_accuracy": results["test"]["accuracy"],
        "val": results["val"],
        "test": results["test"],
        **({"detection": detection} if detection else {}),
        "epochs_to_fit": fit_epoch,
        "final_train_accuracy": history[-1]["accuracy"],
        # whether fitting was still under way at the end (C6's cut-off check reads it)
        "train_accuracy_by_epoch": [row["accuracy"] for row in history],
        "wall_seconds": round(time.time() - start_time, 1),
        "train_seconds": round(train_seconds, 1),
        "train_images_per_second": round(images / train_seconds, 1) if train_seconds else None,
    }
    atomic.write_json(os.path.join(config.model_dir, run_dir.SUMMARY), summary)
    checkpoint_dir = os.path.join(config.model_dir, run_dir.CHECKPOINT_DIR)
    for name in os.listdir(checkpoint_dir) if os.path.isdir(checkpoint_dir) else ():
        os.remove(os.path.join(checkpoint_dir, name))
    return summary


def _detection(model: keras.Model, config: TrainConfig, batch_size: int) -> dict[str, Any] | None:
    """The best model as a weakly supervised detector on the test split (needles-saliency's
    scores: detection AP and pointing accuracy of the saliency and evidence maxima); None for
    noise, which has no needles."""
    if config.noise:
        return None
    from needles_tf.evaluation.saliency import MAPS, localise

    scores, _ = localise(model, config.data_dir, "test", batch_size, num_examples=0)
    return {"split": "test", "count": scores["count"],
            "pointing_chance": scores["pointing_chance"],
            **{name: scores[name] for name in MAPS}}
