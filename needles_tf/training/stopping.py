"""The stop rule: a run ends once its training accuracy has held the paper's "fit" level for a
number of consecutive epochs (--stop_after_fit=N), else at its epoch cap (--epochs).

The paper trains every run for 200 epochs. A study on a small machine cannot, and need not:
a run that has fit its training set for several epochs has stopped improving on it, while a
run that never fits trains to the cap. The decision depends on the epochs' training accuracy
alone (metrics.csv), so a resumed run recounts it from its history and stops where an
uninterrupted one would.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras

FIT_ACCURACY = 0.99  # the paper's "fits the training data"
FIT, CAP = "fit", "cap"  # why a run stopped


def fit_streak(accuracies: Sequence[float]) -> int:
    """How many epochs at the end of `accuracies` (training accuracy per epoch, in order) are
    at or above FIT_ACCURACY."""
    streak = 0
    for accuracy in accuracies:
        streak = streak + 1 if accuracy >= FIT_ACCURACY else 0
    return streak


def stopped_epoch(history: Sequence[dict[str, Any]], patience: int) -> int | None:
    """The epoch (1-based) at which the rule stops a run with these metrics.csv rows: the
    first whose streak reaches `patience`; None while it has not (or the rule is off: 0)."""
    if patience < 1:
        return None
    streak = 0
    for row in history:
        streak = streak + 1 if row["accuracy"] >= FIT_ACCURACY else 0
        if streak >= patience:
            return int(row["epoch"])
    return None


def describe(patience: int, history: Sequence[dict[str, Any]], cap: int) -> dict[str, Any]:
    """summary.json's record of the rule: {"stop_rule": {...} or None, "stop_reason": "fit" or
    "cap", "stopped_epoch": the last epoch trained}."""
    stopped = stopped_epoch(history, patience)
    return {"stop_rule": ({"fit_accuracy": FIT_ACCURACY, "patience": patience, "cap": cap}
                          if patience >= 1 else None),
            "stop_reason": FIT if stopped is not None else CAP,
            "stopped_epoch": stopped if stopped is not None else
            (int(history[-1]["epoch"]) if history else 0)}


class StopAfterFit(keras.callbacks.Callback):
    """Stops training at the end of the epoch whose training accuracy makes `patience`
    consecutive epochs at or above FIT_ACCURACY.

    Args:
      patience: consecutive fitting epochs that end the run (>= 1).
      streak: the fitting epochs that end the history before the first epoch this session
        trains (a resume's, fit_streak of its metrics.csv).
    """

    def __init__(self, patience: int, streak: int = 0):
        super().__init__()
        if patience < 1:
            raise ValueError(f"stop_after_fit must be >= 1 to stop a run, got {patience}")
        self.patience, self.streak = patience, streak

    def on_epoch_end(self, epoch, logs=None):
        accuracy = (logs or {}).get("accuracy")
        if accuracy is None:
            return
        self.streak = self.streak + 1 if float(accuracy) >= FIT_ACCURACY else 0
        if self.streak >= self.patience:
            self.model.stop_training = True
