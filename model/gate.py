"""The gate: which scored images the model may judge, and which must go to a person.

Three things decide an image's route, all fitted by ``model.fit_gate`` and shipped beside the
weights (``X.json`` holds the limits and thresholds, ``X.gate.npz`` the domain statistics):

- image-quality limits (``model.quality`` measures), fitted on the training split;
- a domain distance: the Mahalanobis distance of the network's own features (the penultimate
  layer plus the mean and the spatial standard deviation of every convolution block's
  activations, log-scaled) to the nearer of the two training classes, with a tied, slightly
  shrunk covariance; its threshold is a quantile of the validation split's distances;
- calibration: ``p_leukemia = sigmoid(a * logit(raw) + b)`` (temperature scaling with a bias,
  i.e. Platt scaling on the logit), fitted on the validation split.

Only NumPy here: the API reads the same file to show what a route means without TensorFlow.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from model.card import CardData, card_path
from model.precision import FLOAT32
from model.quality import MEASURES


class Route(enum.StrEnum):
    FLAGGED = "flagged"  # in domain, p_leukemia >= threshold
    CLEARED = "cleared"  # in domain, below it
    MANUAL_REVIEW = "manual_review"  # the model should not be trusted on this image


class RouteReason(enum.StrEnum):
    UNSUPPORTED_SIZE = "unsupported_size"
    UNUSUAL_COLOUR_MODE = "unusual_colour_mode"
    UNDEREXPOSED = "underexposed"
    OVEREXPOSED = "overexposed"
    EMPTY_FIELD = "empty_field"
    NOT_A_STAINED_SMEAR = "not_a_stained_smear"
    OUT_OF_FOCUS = "out_of_focus"
    NOISY = "noisy"
    COMPRESSION_ARTEFACTS = "compression_artefacts"
    OUTSIDE_TRAINING_DOMAIN = "outside_training_domain"
    NO_GATE = "no_gate"


# What each reason means to the person who now has to look at the image.
REASON_TEXT: dict[str, str] = {
    RouteReason.UNSUPPORTED_SIZE: "image size or shape unlike the images the model was "
    "trained on (too small, or too oblong)",
    RouteReason.UNUSUAL_COLOUR_MODE: "unusual colour format (palette, 1-bit, 16-bit or CMYK)",
    RouteReason.UNDEREXPOSED: "too dark (underexposed)",
    RouteReason.OVEREXPOSED: "too bright or washed out (overexposed)",
    RouteReason.EMPTY_FIELD: "field mostly empty: few or no cells",
    RouteReason.NOT_A_STAINED_SMEAR: "colours unlike a stained blood smear",
    RouteReason.OUT_OF_FOCUS: "out of focus, or enlarged from a smaller image or a digital "
    "zoom: less fine detail than the training images",
    RouteReason.NOISY: "too noisy or grainy",
    RouteReason.COMPRESSION_ARTEFACTS: "JPEG block pattern stronger than in the training "
    "images (heavy compression, or a compressed image enlarged): send the camera's original",
    RouteReason.OUTSIDE_TRAINING_DOMAIN: "unlike the images the model was trained on "
    "(another microscope, camera, stain or magnification?)",
    RouteReason.NO_GATE: "this model has no fitted quality and domain gate",
}

# (measure, side, reason) in the order a reason is reported when several apply: the cause a
# technician can fix first (size, exposure, empty field) before what follows from it.
CHECKS: tuple[tuple[str, str, RouteReason], ...] = (
    ("min_side", "low", RouteReason.UNSUPPORTED_SIZE),
    ("aspect_ratio", "high", RouteReason.UNSUPPORTED_SIZE),
    ("brightness", "low", RouteReason.UNDEREXPOSED),
    ("dark_fraction", "high", RouteReason.UNDEREXPOSED),
    ("brightness", "high", RouteReason.OVEREXPOSED),
    ("bright_fraction", "high", RouteReason.OVEREXPOSED),
    ("object_fraction", "low", RouteReason.EMPTY_FIELD),
    ("stained_fraction", "low", RouteReason.NOT_A_STAINED_SMEAR),
    ("off_hue_fraction", "high", RouteReason.NOT_A_STAINED_SMEAR),
    # Before blockiness: a field enlarged 2x or 4x has its own steps every second pixel,
    # which line up with JPEG's block edges, and enlarged is what the person should read.
    ("fine_detail", "low", RouteReason.OUT_OF_FOCUS),
    ("blockiness", "high", RouteReason.COMPRESSION_ARTEFACTS),
    ("focus", "low", RouteReason.OUT_OF_FOCUS),
    ("focus", "high", RouteReason.NOISY),
)
# Colour modes that Pillow converts with loss (palette, 1-bit, greyscale with or without
# alpha, 16-bit in any of Pillow's spellings, float, CMYK): the network never saw such an
# image, and the same cell scores very differently in each (0.02 as RGB, 0.38 as palette,
# 1.00 as 1-bit in the attack of issue #12).
CONVERTED_MODES = frozenset(
    {"1", "P", "PA", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
    | {"CMYK", "YCbCr", "LAB", "HSV"}
)
FEATURE_OFFSET = 1e-3  # log(feature + offset): activations are >= 0 and heavy-tailed
# What the domain features take of each convolution block's activations, per channel. The
# spread ("std") sees what blurs, magnifies or recolours a field while leaving its mean
# activation nearly where it was (held-out blur sigma 1.5: 77% -> 95% to a person, same
# network and rule). Gates fitted before it measured the mean only, and still read so.
MEAN_ONLY: tuple[str, ...] = ("mean",)
MEAN_AND_STD: tuple[str, ...] = ("mean", "std")
BLOCK_STATISTICS = frozenset({MEAN_ONLY, MEAN_AND_STD})


@dataclass(frozen=True)
class Decision:
    route: Route
    reason: RouteReason | None
    failed: tuple[str, ...]  # every check that failed, "measure:side" or "domain"


@dataclass(frozen=True)
class Gate:
    hue_band: tuple[int, int]
    limits: dict[str, dict[str, float]]  # measure -> {"low": x} and/or {"high": y}
    domain_threshold: float
    class_means: np.ndarray  # (groups, D): each class, or each class in each view
    precision: np.ndarray  # (D, D)
    calibration: tuple[float, float]  # (a, b)
    reference: dict[str, list[float]]  # validation decile edges, for the drift alarm
    sha256: str  # of the statistics file: part of the model version
    block_statistics: tuple[str, ...] = MEAN_ONLY  # ``model.gate_features.feature_network``

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        return calibrate(raw, self.calibration)

    def domain_distance(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row to the nearest group mean (``fit_domain``)."""
        x = np.log(np.maximum(np.asarray(features, np.float64), 0.0) + FEATURE_OFFSET)
        # One matrix product in whitened space (precision = L L^T, so the distance is
        # |xL - mL|^2): a three-operand einsum looped naively and cost more than a tenth of
        # the network's own time per batch.
        whitened = x @ self.whitening
        dists = [np.sum((whitened - m) ** 2, axis=1) for m in self.whitened_means]
        return np.min(dists, axis=0)

    @cached_property
    def whitening(self) -> np.ndarray:
        return np.linalg.cholesky(self.precision)

    @cached_property
    def whitened_means(self) -> np.ndarray:
        return self.class_means @ self.whitening

    def quality_failures(self, measures: dict[str, float]) -> list[tuple[str, RouteReason]]:
        failed = []
        for name, side, reason in CHECKS:
            limit = self.limits.get(name, {}).get(side)
            value = measures.get(name)
            if limit is None or value is None or np.isnan(value):
                continue
            if (side == "low" and value < limit) or (side == "high" and value > limit):
                failed.append((f"{name}:{side}", reason))
        return failed

    def decide(
        self, p: float, threshold: float, measures: dict[str, float], distance: float, mode: str
    ) -> Decision:
        failed = self.quality_failures(measures)
        if mode in CONVERTED_MODES:
            failed.insert(0, (f"mode:{mode}", RouteReason.UNUSUAL_COLOUR_MODE))
        if not np.isfinite(distance) or distance > self.domain_threshold:
            failed.append(("domain", RouteReason.OUTSIDE_TRAINING_DOMAIN))
        names = tuple(name for name, _ in failed)
        if failed:
            return Decision(Route.MANUAL_REVIEW, failed[0][1], names)
        return Decision(Route.FLAGGED if p >= threshold else Route.CLEARED, None, names)

    def describe(self) -> dict[str, Any]:
        """What the card and the ``model_version`` row record (everything but the arrays)."""
        described: dict[str, Any] = {
            "hue_band": list(self.hue_band),
            "limits": self.limits,
            "domain_threshold": self.domain_threshold,
            "calibration": {
                "method": "platt_on_logit",
                "a": self.calibration[0],
                "b": self.calibration[1],
            },
            "reference": self.reference,
            "statistics_sha256": self.sha256,
        }
        # Left out for a mean-only gate, so that a model fitted before the spread was measured
        # keeps the model version its results already carry.
        if self.block_statistics != MEAN_ONLY:
            described["block_statistics"] = list(self.block_statistics)
        return described


def route_image(
    gate: Gate | None,
    threshold: float,
    p: float,
    measures: dict[str, float],
    distance: float,
    mode: str,
) -> Decision:
    """The route of one scored image; a network shipped without a fitted gate cannot say
    which images it may judge, so all of its images go to a person."""
    if gate is None:
        return Decision(Route.MANUAL_REVIEW, RouteReason.NO_GATE, ("gate",))
    return gate.decide(p, threshold, measures, distance, mode)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def calibrate(raw: np.ndarray, ab: tuple[float, float]) -> np.ndarray:
    a, b = ab
    return 1.0 / (1.0 + np.exp(-(a * logit(raw) + b)))


def gate_path(weights: Path) -> Path:
    return weights.with_suffix(".gate.npz")


def read_gate(weights: Path, card: CardData | None) -> Gate | None:
    """The gate described in a card (``X.json``'s ``gate``) with its statistics file."""
    spec = card.get("gate") if card is not None else None
    stats = gate_path(weights)
    if not spec or not stats.is_file():
        return None
    raw = stats.read_bytes()
    with np.load(stats, allow_pickle=False) as npz:
        means, precision = npz["class_means"], npz["precision"]
    cal = spec["calibration"]
    statistics = tuple(spec.get("block_statistics", MEAN_ONLY))
    if statistics not in BLOCK_STATISTICS:
        raise ValueError(f"{card_path(weights)}: unknown gate block statistics {statistics}")
    return Gate(
        hue_band=(int(spec["hue_band"][0]), int(spec["hue_band"][1])),
        limits={k: {s: float(v) for s, v in sides.items()} for k, sides in spec["limits"].items()},
        domain_threshold=float(spec["domain_threshold"]),
        class_means=means,
        precision=precision,
        calibration=(float(cal["a"]), float(cal["b"])),
        reference={k: [float(x) for x in v] for k, v in spec.get("reference", {}).items()},
        sha256=hashlib.sha256(raw).hexdigest(),
        block_statistics=statistics,
    )


def write_statistics(weights: Path, gate: Gate) -> Gate:
    """Write ``X.gate.npz``; the gate returned carries that file's SHA-256."""
    path = gate_path(weights)
    np.savez(path, class_means=gate.class_means, precision=gate.precision)
    return replace(gate, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def permissive_gate(feature_dim: int, block_statistics: tuple[str, ...] = MEAN_ONLY) -> Gate:
    """A gate that lets every image through, for untrained plumbing-test networks only.

    ``leukoscreen model-init --permissive-gate`` writes it, and says so in the card: the
    pipeline's flagged and cleared routes can then be tested without a fitted gate. (JSON
    columns reject infinity, hence a huge finite domain threshold.)
    """
    return Gate(
        hue_band=(0, 255),
        limits={},
        domain_threshold=1e300,
        class_means=np.zeros((2, feature_dim)),
        precision=np.eye(feature_dim),
        calibration=(1.0, 0.0),
        reference={},
        sha256="",
        block_statistics=block_statistics,
    )


def model_version(
    weights_sha256: str, card: CardData | None, gate: Gate | None, precision: str = FLOAT32
) -> str:
    """One id for everything that decides a result: weights, threshold, output, gate, and the
    arithmetic the network ran in where it is not float32 (``model.precision``)."""
    if gate is None or card is None:
        if precision == FLOAT32:
            return weights_sha256
        return hashlib.sha256(f"{weights_sha256}:{precision}".encode()).hexdigest()
    digest = hashlib.sha256(weights_sha256.encode())
    decided = {
        "threshold": card.get("threshold"),
        "output": card.get("output"),
        "gate": gate.describe(),
    }
    if precision != FLOAT32:
        decided["precision"] = precision
    digest.update(json.dumps(decided, sort_keys=True).encode())
    return digest.hexdigest()


# ---- fitting (training-time; the worker only reads what this writes) ----------------------


def fit_hue_band(hue_histograms: np.ndarray, mass: float = 0.99) -> tuple[int, int]:
    """The shortest circular run of 8-bit hues holding ``mass`` of the stained pixels."""
    hist = np.asarray(hue_histograms, np.float64).sum(axis=0)
    hist /= max(hist.sum(), 1.0)
    doubled = np.concatenate([hist, hist])
    csum = np.concatenate([[0.0], np.cumsum(doubled)])
    best = (0, 255)
    for width in range(1, 257):
        sums = csum[width : width + 256] - csum[:256]
        start = int(np.argmax(sums))
        if sums[start] >= mass:
            best = (start, (start + width - 1) % 256)
            break
    return best


def fit_limits(
    measures: np.ndarray, quantile: float = 0.001, margin: float = 0.1, fraction_floor: float = 0.02
) -> dict[str, dict[str, float]]:
    """Limits just outside the training images' range, for the sides that ``CHECKS`` use.

    Each limit is the training split's ``quantile`` (or ``1 - quantile``) widened by
    ``margin`` of its 1-99% range, and by at least ``fraction_floor`` for a share of pixels
    (a measure that is 0 on every training image must not route an image for one pixel); a
    low limit is never widened below a tenth of the quantile, so that it can still fail.
    Size is a policy, not a fit: an image may be down to half the training resolution and a
    quarter more oblong than the most oblong training image.
    """
    limits: dict[str, dict[str, float]] = {}
    for name, side, _ in CHECKS:
        col = measures[:, MEASURES.index(name)]
        col = col[np.isfinite(col)]
        if name == "min_side":
            limits.setdefault(name, {})[side] = float(col.min() / 2)
            continue
        if name == "aspect_ratio":
            limits.setdefault(name, {})[side] = float(col.max() + 0.25)
            continue
        span = float(np.quantile(col, 0.99) - np.quantile(col, 0.01))
        widen = margin * span
        if name.endswith("_fraction"):
            widen = max(widen, fraction_floor)
        if side == "low":
            # Never below a tenth of the training quantile: a limit at or under zero could
            # not fail, and one much closer to the quantile routes sparse but real fields.
            low = np.quantile(col, quantile)
            limits.setdefault(name, {})[side] = float(max(low - widen, low / 10))
        else:
            limits.setdefault(name, {})[side] = float(np.quantile(col, 1 - quantile) + widen)
    return limits


def fit_domain(
    features: np.ndarray, groups: np.ndarray, shrinkage: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Each group's mean and the shared precision matrix of log-scaled features.

    The groups are the classes, or each class in each view of the images
    (``model.fit_gate.VIEWS``): a view moves the mean of orientation-sensitive features but
    not their spread, so one mean per view keeps the covariance as tight as the camera's own
    orientation gives it, and a turned field is near its own view's mean.
    """
    x = np.log(np.maximum(np.asarray(features, np.float64), 0.0) + FEATURE_OFFSET)
    groups = np.asarray(groups)
    members = [x[groups == g] for g in np.unique(groups)]
    means = np.stack([m.mean(axis=0) for m in members])
    centred = np.concatenate([m - mean for m, mean in zip(members, means, strict=True)])
    cov = np.cov(centred, rowvar=False)
    # Shrink towards a scaled identity: some feature channels are nearly constant.
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    return means, np.linalg.inv(cov)


def fit_calibration(
    raw: np.ndarray, labels: np.ndarray, iterations: int = 100
) -> tuple[float, float]:
    """Platt scaling on the logit: Newton's method with step halving (two parameters)."""
    z = logit(raw)
    y = np.asarray(labels, np.float64)

    def loss(a: float, b: float) -> float:
        t = a * z + b
        # log(1 + e^t) - y t, written so that large |t| does not overflow
        return float(np.sum(np.logaddexp(0.0, t) - y * t))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * z + b, -500, 500)))
        g = np.array([np.sum((p - y) * z), np.sum(p - y)])
        w = p * (1 - p) + 1e-12
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]])
        step = np.linalg.solve(h + 1e-9 * np.eye(2), g)
        scale = 1.0
        while scale > 1e-6 and loss(a - scale * step[0], b - scale * step[1]) > current:
            scale /= 2
        a, b = a - scale * step[0], b - scale * step[1]
        previous, current = current, loss(a, b)
        if previous - current < 1e-12:
            break
    return float(a), float(b)


def expected_calibration_error(p: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    p, y = np.asarray(p, np.float64), np.asarray(labels, np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for k in range(bins):
        sel = which == k
        if sel.any():
            ece += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(ece)


def reliability(p: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    p, y = np.asarray(p, np.float64), np.asarray(labels, np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    return [
        {
            "bin": k,
            "n": int((which == k).sum()),
            "mean_p": float(p[which == k].mean()),
            "observed": float(y[which == k].mean()),
        }
        for k in range(bins)
        if (which == k).any()
    ]
