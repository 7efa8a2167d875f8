"""Metrics against hand-computed confusion matrices, CIs, threshold choice, colour features."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model import metrics as mm

# 4 positives, 6 negatives at threshold 0.5: tp=3, fn=1, fp=2, tn=4.
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.5, 0.2, 0.7, 0.6, 0.4, 0.3, 0.1, 0.05])


def test_confusion_by_hand():
    assert mm.confusion(Y, P, 0.5) == {"tp": 3, "fp": 2, "tn": 4, "fn": 1}


def test_score_equal_to_threshold_is_positive():
    assert mm.confusion(np.array([1, 0]), np.array([0.5, 0.5]), 0.5) == {
        "tp": 1,
        "fp": 1,
        "tn": 0,
        "fn": 0,
    }


def test_metrics_by_hand():
    m = mm.binary_metrics(Y, P, 0.5)
    assert m["n"] == 10 and m["positives"] == 4 and m["negatives"] == 6
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # AUC: fraction of (positive, negative) pairs ranked correctly.
    pairs = [(a, b) for a in P[Y == 1] for b in P[Y == 0]]
    assert m["auc"] == pytest.approx(sum(a > b for a, b in pairs) / len(pairs))
    assert m["auc"] == pytest.approx(18 / 24)
    expected_loss = -np.mean(Y * np.log(P) + (1 - Y) * np.log(1 - P))
    assert m["loss"] == pytest.approx(expected_loss)
    assert m["threshold"] == 0.5


def test_metrics_all_wrong_and_all_right():
    y = np.array([1, 1, 0, 0])
    wrong = mm.binary_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]), 0.5)
    assert wrong["accuracy"] == 0 and wrong["sensitivity"] == 0 and wrong["specificity"] == 0
    assert wrong["precision"] == 0 and wrong["f1"] == 0 and wrong["auc"] == 0
    right = mm.binary_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]), 0.5)
    assert right["accuracy"] == 1 and right["f1"] == 1 and right["auc"] == 1
    assert right["confusion"] == {"tp": 2, "fp": 0, "tn": 2, "fn": 0}


def test_auc_is_none_with_one_class():
    m = mm.binary_metrics(np.array([1, 1, 1]), np.array([0.2, 0.6, 0.9]), 0.5)
    assert m["auc"] is None and m["sensitivity"] == pytest.approx(2 / 3)


def test_wilson_known_values():
    lo, hi = mm.wilson_ci(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = mm.wilson_ci(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == pytest.approx(1)
    lo, hi = mm.wilson_ci(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert mm.wilson_ci(0, 0) is None


def test_proportion_cis_use_the_right_denominators():
    cis = mm.proportion_cis({"tp": 10, "fn": 0, "tn": 0, "fp": 10})
    assert cis["sensitivity"][1] == pytest.approx(1) and cis["specificity"][0] == pytest.approx(0)
    assert cis["sensitivity"][0] > 0.7 and cis["specificity"][1] < 0.3


def test_group_bootstrap_brackets_point_estimate():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    p = np.clip(y * 0.6 + rng.normal(0.2, 0.15, 100), 0, 1)
    groups = [f"g{i // 5}" for i in range(100)]
    ci = mm.group_bootstrap_ci(y, p, groups, 0.5, n_boot=200)
    point = mm.binary_metrics(y, p, 0.5)
    for key in ("auc", "sensitivity", "specificity", "f1"):
        assert ci[key][0] <= point[key] <= ci[key][1]
        assert ci[key][0] < ci[key][1] or ci[key][0] == 1.0


def test_choose_threshold_full_sensitivity():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    t = mm.choose_threshold(y, p, 1.0)
    assert t == pytest.approx(0.35)  # halfway between 0.5 (lowest positive) and 0.2
    m = mm.binary_metrics(y, p, t)
    assert m["sensitivity"] == 1 and m["specificity"] == pytest.approx(2 / 3)


def test_choose_threshold_lower_target_buys_specificity():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    t = mm.choose_threshold(y, p, 0.6)
    assert t == pytest.approx(0.65)
    m = mm.binary_metrics(y, p, t)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == 1


def test_choose_threshold_meets_target_on_random_scores():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)

    def sens_spec(t):
        pred = p >= t
        return pred[y == 1].mean(), (~pred[y == 0]).mean()

    for target in (0.9, 0.95, 0.99, 1.0):
        t = mm.choose_threshold(y, p, target)
        sens, spec = sens_spec(t)
        assert sens >= target
        # brute force: no threshold with the same sensitivity floor is more specific
        best = max(sp for se, sp in map(sens_spec, np.unique(p)) if se >= target)
        assert spec == pytest.approx(best)


def test_choose_threshold_needs_both_classes():
    with pytest.raises(ValueError):
        mm.choose_threshold(np.array([1, 1]), np.array([0.3, 0.4]))


def test_threshold_sweep_rows():
    rows = mm.threshold_sweep(Y, P, [0.0, 0.5, 1.0])
    assert [r["threshold"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[0]["sensitivity"] == 1 and rows[0]["specificity"] == 0
    assert rows[1]["confusion"] == {"tp": 3, "fp": 2, "tn": 4, "fn": 1}
    assert rows[2]["sensitivity"] == 0 and rows[2]["specificity"] == 1


def test_colour_features_by_hand():
    img = np.zeros((2, 4, 4, 3), np.uint8)
    img[0, ..., 0] = 200
    img[1, :2, :, 2] = 100  # half the pixels of channel b at 100
    f = mm.colour_features(img)
    names = mm.colour_feature_names()
    assert f.shape == (2, 18) and len(names) == 18
    assert f[0, names.index("r_mean")] == 200 and f[0, names.index("g_p95")] == 0
    assert f[1, names.index("b_mean")] == 50 and f[1, names.index("b_p95")] == 100
    assert f[1, names.index("b_p25")] == 0


def test_colour_baseline_round_trip_matches_sklearn():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(80, 18))
    y = (feats[:, 0] + 0.3 * rng.normal(size=80) > 0).astype(int)
    base = mm.fit_colour_baseline(feats, y)
    p = mm.colour_baseline_scores(base, feats)
    assert ((p >= 0.5) == y).mean() > 0.85
    assert math.isfinite(base["intercept"]) and len(base["coef"]) == 18
