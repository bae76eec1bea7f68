"""Binary classification metrics of needle probabilities (scikit-learn)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

THRESHOLD = 0.5  # an image is predicted positive when its needle probability is above it


def classification_metrics(labels: Sequence[int] | np.ndarray,
                           probabilities: Sequence[float] | np.ndarray,
                           threshold: float = THRESHOLD) -> dict[str, Any]:
    """Accuracy, precision, recall, AUC, average precision and confusion matrix.

    An image is predicted positive when its needle probability is above `threshold` (at 0.5
    this is the argmax of two logits, ties going to "no needle", as in Keras' accuracy).
    Precision / recall without predicted / true positives are 0.0 (as Keras reports them);
    AUC and average precision are None when the labels hold only one class.
    The confusion matrix is [[tn, fp], [fn, tp]] (rows: true label, columns: prediction).
    """
    y = np.asarray(labels).ravel()
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    if y.size == 0:
        raise ValueError("no labels: metrics of an empty set are undefined")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1; got {sorted(set(y.tolist()) - {0, 1})[:5]}")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("probabilities must be finite and in [0, 1]")
    y = y.astype(np.int64)
    predicted = (p > threshold).astype(np.int64)
    (tn, fp), (fn, tp) = skm.confusion_matrix(y, predicted, labels=[0, 1]).tolist()
    both_classes = 0 < y.sum() < y.size
    return {
        "accuracy": (tp + tn) / y.size,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "auc": float(skm.roc_auc_score(y, p)) if both_classes else None,
        "average_precision": float(skm.average_precision_score(y, p)) if both_classes else None,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "count": int(y.size),
        "positives": int(y.sum()),
        "threshold": float(threshold),
    }
