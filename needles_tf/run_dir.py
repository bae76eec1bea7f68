"""The layout of a run directory, shared by training, evaluation and export.

    <model_dir>/
      config.json       the run's settings (written once its inputs are checked)
      summary.json      flags, parameter count, best epoch, val/test metrics at best, wall time
      metrics.csv       one row per finished epoch
      best.keras        the model of the best validation epoch
      checkpoint/       the resumable state of the last finished epoch
      logs/             TensorBoard event files (train/, validation/)
      eval_<split>_<dataset>.json   needles-evaluate's metrics
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from typing import Any

CONFIG = "config.json"
SUMMARY = "summary.json"
METRICS = "metrics.csv"
BEST_MODEL = "best.keras"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_STATE = "state.json"  # in CHECKPOINT_DIR: the last finished epoch
LOG_DIR = "logs"


class RunDirError(ValueError):
    """A model directory that cannot be used; the message names the path and the problem."""


def best_model_path(model_dir: str) -> str:
    """Path of the best model; a clear error when the run has none (yet)."""
    path = os.path.join(model_dir, BEST_MODEL)
    if not os.path.isfile(path):
        raise RunDirError(f"{path}: no best model here; is {model_dir!r} a needles-train "
                          "model_dir with at least one finished epoch?")
    return path


def load_best_model(model_dir: str):
    """The run's best model as a keras.Model (our custom layers are registered on import)."""
    import keras

    import needles_tf.models  # noqa: F401  registers the custom layers for deserialisation

    return keras.models.load_model(best_model_path(model_dir))


def read_json(path: str) -> dict[str, Any]:
    """A JSON file of a run; a clear error naming it when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunDirError(f"{path}: not found; is {os.path.dirname(path)!r} a needles-train "
                          "model_dir?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path}: cannot be read as JSON ({e})") from None


def read_summary(model_dir: str) -> dict[str, Any]:
    """summary.json of a run."""
    return read_json(os.path.join(model_dir, SUMMARY))


def eval_path(model_dir: str, split: str, data_dir: str) -> str:
    """Where needles-evaluate keeps the metrics of `split` of the dataset in `data_dir`: named
    by split and the dataset directory's name ("." names its directory)."""
    dataset = os.path.basename(os.path.abspath(data_dir))
    return os.path.join(model_dir, f"eval_{split}_{dataset}.json")


def checkpoint_state(model_dir: str) -> dict[str, Any] | None:
    """{"epoch": finished epochs, "weights": file, ...} of the run's checkpoint, or None."""
    path = os.path.join(model_dir, CHECKPOINT_DIR, CHECKPOINT_STATE)
    return read_json(path) if os.path.exists(path) else None


def committed_epochs(model_dir: str) -> int:
    """Epochs the run's checkpoint holds (0 without one): where a resume starts."""
    return (checkpoint_state(model_dir) or {"epoch": 0})["epoch"]


def has_finished_epoch(model_dir: str) -> bool:
    """Whether the run in `model_dir` has finished an epoch (from then on it is kept)."""
    return any(os.path.exists(os.path.join(model_dir, name)) for name in (METRICS, SUMMARY)) \
        or checkpoint_state(model_dir) is not None


def remove_run(model_dir: str) -> None:
    """Removes what a run writes (the files above, evaluations); other files stay."""
    for name in (CONFIG, SUMMARY, METRICS, BEST_MODEL):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(model_dir, name))
    for name in (CHECKPOINT_DIR, LOG_DIR):
        shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)
    for path in glob.glob(eval_path(glob.escape(model_dir), "*", "*")):
        os.remove(path)


def unfinished_warning(model_dir: str) -> str | None:
    """A warning line when the run in `model_dir` has not finished (killed, failed or still
    training), naming the epochs done; None for a finished run."""
    summary = os.path.join(model_dir, SUMMARY)
    try:
        if os.path.exists(summary) and read_json(summary).get("status") == "finished":
            return None
        done = (checkpoint_state(model_dir) or {}).get("epoch", "?")
        config = os.path.join(model_dir, CONFIG)
        epochs = read_json(config).get("epochs", "?") if os.path.exists(config) else "?"
    except RunDirError:
        done = epochs = "?"
    return (f"warning: {model_dir}: the run has not finished ({done} of {epochs} epochs done); "
            "this is its best model so far. Re-run needles-train with the same flags to finish "
            "it.")
