"""Recognition metrics: top-k accuracy, average precision (identical to scikit-learn's
``average_precision_score``), mean AP over classes, confusion matrix."""
from __future__ import annotations

import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows of ``scores[n,C]`` whose true class ``labels[n]`` is among the top ``k`` scores."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one class: ``sum_n (R_n - R_{n-1}) P_n`` over distinct score thresholds (ties share a threshold).

    ``scores[n]`` float, ``positive[n]`` bool; NaN when there is no positive.
    """
    positive = positive.astype(bool)
    if not positive.any():
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP per class ``[C]`` from ``scores[n,C]`` and integer labels ``[n]`` or multi-hot ``[n,C]``."""
    onehot = targets if targets.ndim == 2 else np.eye(scores.shape[1], dtype=bool)[targets]
    return np.array([average_precision(scores[:, c], onehot[:, c]) for c in range(scores.shape[1])])


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP: mean of per-class AP over the classes that have at least one positive."""
    ap = per_class_ap(scores, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C,C]`` counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    return cm
