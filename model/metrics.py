"""Screening metrics, the operating-point rule, confidence intervals and the colour baseline.

Everything here is NumPy + scikit-learn (no TensorFlow). A score ``p >= threshold`` is a
positive (leukemia) call.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from model.gate import Route

PERCENTILES = (5, 25, 50, 75, 95)


def predict_at(p: np.ndarray, threshold: float) -> np.ndarray:
    return (np.asarray(p) >= threshold).astype(np.int64)


def confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, int]:
    tn, fp, fn, tp = confusion_matrix(y, predict_at(p, threshold), labels=[0, 1]).ravel()
    return {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Metrics at one threshold; AUC and log loss are threshold-free."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    pred = predict_at(p, threshold)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "sensitivity": float(recall_score(y, pred, pos_label=1, zero_division=0)),
        "specificity": float(recall_score(y, pred, pos_label=0, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "auc": _auc(y, p),
        "loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "threshold": float(threshold),
        "n": int(len(y)),
        "positives": int(y.sum()),
        "negatives": int(len(y) - y.sum()),
        "confusion": confusion(y, p, threshold),
    }


def choose_threshold(y: np.ndarray, p: np.ndarray, min_sensitivity: float = 0.99) -> float:
    """Highest specificity with sensitivity >= min_sensitivity (ties: highest threshold).

    The threshold is put halfway between the chosen score and the next lower score, so
    that it keeps the same calls on this data and does not sit on an observed score.
    """
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("threshold selection needs both classes")
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    ok = np.flatnonzero((tpr >= min_sensitivity - 1e-12) & np.isfinite(thr))
    best = ok[np.argmin(fpr[ok])]  # first minimum = highest threshold among ties
    lower = thr[best + 1] if best + 1 < len(thr) else 0.0
    return float((thr[best] + lower) / 2.0)


def threshold_sweep(y: np.ndarray, p: np.ndarray, thresholds=None) -> list[dict]:
    if thresholds is None:
        thresholds = np.round(np.linspace(0.05, 0.95, 19), 2)
    rows = []
    for t in thresholds:
        m = binary_metrics(y, p, float(t))
        keys = ("threshold", "sensitivity", "specificity", "precision", "f1", "accuracy")
        rows.append({k: m[k] for k in keys} | {"confusion": m["confusion"]})
    return rows


def wilson_ci(successes: int, total: int, z: float = 1.959964) -> list[float] | None:
    """95% Wilson score interval for a proportion."""
    if total == 0:
        return None
    phat = successes / total
    denom = 1 + z * z / total
    centre = (phat + z * z / (2 * total)) / denom
    half = z * math.sqrt(phat * (1 - phat) / total + z * z / (4 * total * total)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def proportion_cis(cm: dict[str, int]) -> dict[str, list[float] | None]:
    tp, fp, tn, fn = cm["tp"], cm["fp"], cm["tn"], cm["fn"]
    return {
        "sensitivity": wilson_ci(tp, tp + fn),
        "specificity": wilson_ci(tn, tn + fp),
        "precision": wilson_ci(tp, tp + fp),
        "accuracy": wilson_ci(tp + tn, tp + tn + fp + fn),
    }


def group_bootstrap_ci(
    y: np.ndarray,
    p: np.ndarray,
    groups: list[str],
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, list[float]]:
    """95% percentile intervals for AUC, F1, sensitivity, specificity, resampling whole groups
    (slide blocks) so that correlated images are not counted as independent evidence."""
    y, p, group_of = np.asarray(y), np.asarray(p), np.asarray(groups)
    names = np.unique(group_of)
    members = [np.flatnonzero(group_of == g) for g in names]
    rng = np.random.default_rng(seed)
    stats: dict[str, list[float]] = {"auc": [], "f1": [], "sensitivity": [], "specificity": []}
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])
        yb, pb = y[idx], p[idx]
        if len(np.unique(yb)) < 2:
            continue
        pred = predict_at(pb, threshold)
        stats["auc"].append(roc_auc_score(yb, pb))
        stats["f1"].append(f1_score(yb, pred, zero_division=0))
        stats["sensitivity"].append(recall_score(yb, pred, pos_label=1, zero_division=0))
        stats["specificity"].append(recall_score(yb, pred, pos_label=0, zero_division=0))
    return {
        k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
        for k, v in stats.items()
        if v
    }


# ---- colour-only baseline -------------------------------------------------------------


def colour_feature_names() -> list[str]:
    return [f"{c}_{s}" for c in "rgb" for s in ["mean", *[f"p{q}" for q in PERCENTILES]]]


def colour_features(images: np.ndarray) -> np.ndarray:
    """Per image and channel: mean and percentiles of uint8 pixels, shape (N, 18)."""
    flat = np.asarray(images, dtype=np.float32).reshape(len(images), -1, 3)
    mean = flat.mean(axis=1)  # (N, 3)
    pct = np.percentile(flat, PERCENTILES, axis=1)  # (5, N, 3)
    feats = [np.concatenate([mean[:, [c]], pct[:, :, c].T], axis=1) for c in range(3)]
    return np.concatenate(feats, axis=1)


def fit_colour_baseline(features: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """Logistic regression on colour statistics, exported as plain numbers."""
    pipe = make_pipeline(
        StandardScaler(),
        LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed),
    )
    pipe.fit(features, y)
    scaler, lr = pipe.named_steps["standardscaler"], pipe.named_steps["logisticregression"]
    return {
        "features": colour_feature_names(),
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "coef": lr.coef_.ravel().tolist(),
        "intercept": float(lr.intercept_[0]),
    }


def colour_baseline_scores(baseline: dict, features: np.ndarray) -> np.ndarray:
    z = (features - np.asarray(baseline["mean"])) / np.asarray(baseline["scale"])
    logits = z @ np.asarray(baseline["coef"]) + baseline["intercept"]
    return 1.0 / (1.0 + np.exp(-logits))


# ---- routes (model.gate): how many images go to a person, and how the rest are judged ----


def route_summary(decisions: list, labels: np.ndarray | None = None) -> dict[str, Any]:
    n = len(decisions)
    routes = Counter(d.route.value for d in decisions)
    out: dict[str, Any] = {
        "n": n,
        "manual_review": routes.get(Route.MANUAL_REVIEW.value, 0) / n if n else None,
        "routes": dict(routes),
        "reasons": dict(Counter(d.reason.value for d in decisions if d.reason)),
    }
    if labels is not None:
        pos = labels == 1
        out["positives_cleared"] = int(
            sum(1 for d, y in zip(decisions, pos, strict=True) if y and d.route == Route.CLEARED)
        )
    return out


def judged_metrics(decisions, labels: np.ndarray) -> dict[str, Any]:
    """Sensitivity and specificity among the images the gate let the model judge."""
    kept = [d.route != Route.MANUAL_REVIEW for d in decisions]
    y = labels[kept]
    called = np.array([d.route == Route.FLAGGED for d in decisions])[kept]
    tp, fn = int((called & (y == 1)).sum()), int((~called & (y == 1)).sum())
    tn, fp = int((~called & (y == 0)).sum()), int((called & (y == 0)).sum())
    return {
        "judged": int(len(y)),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "ci95_wilson": proportion_cis({"tp": tp, "fp": fp, "tn": tn, "fn": fn}),
    }


def subtype_metrics(classes: np.ndarray, subtype_probs: np.ndarray) -> dict:
    """Subtype accuracy on positive images: confusion matrix (rows true, columns predicted,
    in ``model.card.SUBTYPES`` order), per-subtype sensitivity with Wilson intervals.

    ``classes`` are ``model.card.CLASSES`` indices (0 benign, skipped here: the subtype of a
    negative image means nothing); ``subtype_probs`` the (N, 3) conditional probabilities.
    """
    from model.card import SUBTYPES

    positive = classes > 0
    truth = classes[positive] - 1
    predicted = np.argmax(subtype_probs[positive], axis=1)
    k = len(SUBTYPES)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    correct, total = int(np.trace(matrix)), int(matrix.sum())
    per_class = {}
    for i, name in enumerate(SUBTYPES):
        n = int(matrix[i].sum())
        per_class[name] = {
            "n": n,
            "sensitivity": float(matrix[i, i] / n) if n else None,
            "ci95_wilson": wilson_ci(int(matrix[i, i]), n),
        }
    return {
        "n": total,
        "accuracy": correct / total if total else None,
        "accuracy_ci95_wilson": wilson_ci(correct, total),
        "labels": list(SUBTYPES),
        "confusion": matrix.tolist(),
        "per_class": per_class,
    }
