"""Small learned models: a least-squares linear classifier, out-of-fold scores, calibration.

The proxy's decisions that must generalize (does a message stand alone, do two
questions mean the same) are linear models over the local embedding plus a few
evidence features. They are fitted at start-up from labelled examples that
ship with the project (and the operator's own, from the rules), in well under a
second, so no trained weights need to be shipped or downloaded. Thresholds are
not hand-set: `calibrate` picks the lowest score threshold whose error rate on
out-of-fold predictions stays within what the operator tolerates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")

@dataclass(frozen=True, slots=True)
class LinearModel:
    """A fitted linear classifier: `scores(x)` has one column per class (about 0..1, the
    regression of each class's indicator; rows sum to 1). Scores rank examples and are
    turned into decisions by calibrated thresholds (`calibrate`), not read as odds."""

    weights: np.ndarray  # (features + 1, classes), the last row is the bias
    mean: np.ndarray  # feature standardization
    scale: np.ndarray
    classes: tuple[str, ...]

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Class scores of each row of `x` (rows: examples)."""
        xs = (np.atleast_2d(x) - self.mean) / self.scale
        scores: np.ndarray = xs @ self.weights[:-1] + self.weights[-1]
        return scores


def fit(x: np.ndarray, labels: Sequence[str], l2: float = 1.0,
        classes: Sequence[str] | None = None) -> LinearModel:
    """Ridge regression of one-hot class indicators (a least-squares classifier): one
    linear solve, milliseconds for a thousand examples. Classes are balanced by weighting
    each example by the inverse of its class's frequency; `l2` is the ridge penalty per
    example (the bias is not penalized)."""
    names = tuple(classes or sorted(set(labels)))
    y = np.array([names.index(label) for label in labels])
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    xs = np.hstack([(x - mean) / scale, np.ones((len(y), 1))])
    counts = np.bincount(y, minlength=len(names)).astype(np.float64)
    weight = (len(y) / (len(names) * np.maximum(counts, 1.0)))[y]
    onehot = np.eye(len(names))[y]
    penalty = np.full(xs.shape[1], l2 * len(y))
    penalty[-1] = 0.0
    gram = (xs * weight[:, None]).T @ xs + np.diag(penalty)
    w = np.linalg.solve(gram, (xs * weight[:, None]).T @ onehot)
    return LinearModel(w.astype(np.float32), mean.astype(np.float32),
                       scale.astype(np.float32), names)


def out_of_fold(x: np.ndarray, labels: Sequence[str], folds: int = 5, l2: float = 1.0,
                seed: int = 0) -> np.ndarray:
    """Each example's class scores from a model fitted without it (k folds)."""
    classes = tuple(sorted(set(labels)))
    order = np.random.default_rng(seed).permutation(len(labels))
    result = np.zeros((len(labels), len(classes)))
    for fold in range(folds):
        held = order[fold::folds]
        kept = np.setdiff1d(order, held)
        model = fit(x[kept], [labels[i] for i in kept], l2, classes)
        result[held] = model.scores(x[held])
    return result


L2_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def choose_l2(x: np.ndarray, labels: Sequence[str],
              grid: Sequence[float] = L2_GRID) -> tuple[float, np.ndarray]:
    """The ridge penalty with the lowest out-of-fold squared error (Brier score), and
    its out-of-fold scores (columns in sorted class order)."""
    classes = sorted(set(labels))
    truth = np.eye(len(classes))[[classes.index(label) for label in labels]]
    best: tuple[float, float, np.ndarray] | None = None
    for l2 in grid:
        oof = out_of_fold(x, labels, l2=l2)
        loss = float(np.mean((oof - truth) ** 2))
        if best is None or loss < best[0]:
            best = (loss, l2, oof)
    assert best is not None
    return best[1], best[2]


def calibrate(scores: np.ndarray, positive: np.ndarray, max_error: float) -> float:
    """The lowest threshold t such that, among examples scoring >= t, at most
    `max_error` are negatives (precision >= 1 - max_error); 1.0 when none does.

    The lowest such threshold keeps the most true positives (recall) within the bound.
    """
    order = np.argsort(-scores)
    sorted_scores = scores[order]
    wrong = np.cumsum(~positive[order])
    taken = np.arange(1, len(scores) + 1)
    ok = wrong <= max_error * taken
    best = 1.0 + 1e-9
    for i in range(len(scores)):
        # a cut is only possible between distinct scores
        if ok[i] and (i + 1 == len(scores) or sorted_scores[i + 1] < sorted_scores[i]):
            best = float(sorted_scores[i])
    return min(best, 1.0 + 1e-9)


class Once(Generic[T]):
    """Runs `make` once, in a task started on first need; every caller awaits its result."""

    def __init__(self, make: Callable[[], Awaitable[T]]) -> None:
        self._make = make
        self._task: asyncio.Task[T] | None = None

    def start(self) -> None:
        """Start the work now (call from the event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> T:
        return await self._make()

    async def get(self) -> T:
        """The result, waiting for it (and starting the work) if needed."""
        self.start()
        assert self._task is not None
        return await asyncio.shield(self._task)

    @property
    def done(self) -> T | None:
        """The result when the work has finished, else None."""
        task = self._task
        return task.result() if task is not None and task.done() else None


@dataclass(frozen=True, slots=True)
class Forest:
    """A random forest (fitted by scikit-learn) flattened into arrays, so scoring one
    example walks every tree at once in a few vectorized steps (~50 µs) instead of
    scikit-learn's per-call overhead (~10 ms for 200 trees)."""

    feature: np.ndarray  # (trees, nodes) split feature, -1 at leaves
    threshold: np.ndarray  # (trees, nodes)
    left: np.ndarray  # (trees, nodes) child indices
    right: np.ndarray
    positive: np.ndarray  # (trees, nodes) share of positive training examples at the node

    def score(self, x: np.ndarray) -> float:
        """The forest's positive-class probability for one example."""
        x = np.asarray(x, dtype=np.float32)  # scikit-learn splits on float32 values
        trees = np.arange(self.feature.shape[0])
        node = np.zeros(len(trees), dtype=np.intp)
        while True:
            feature = self.feature[trees, node]
            inner = feature >= 0
            if not inner.any():
                return float(self.positive[trees, node].mean())
            goes_left = x[np.where(inner, feature, 0)] <= self.threshold[trees, node]
            node = np.where(inner, np.where(goes_left, self.left[trees, node],
                                            self.right[trees, node]), node)


FOREST_OPTIONS = {"n_estimators": 200, "min_samples_leaf": 3, "random_state": 0, "n_jobs": 1}


def fit_forest(x: np.ndarray, positive: np.ndarray) -> Forest:
    """Fit a random forest on `x` (rows) for the boolean target `positive`."""
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(**FOREST_OPTIONS).fit(x, positive)
    trees = [e.tree_ for e in model.estimators_]
    width = max(t.node_count for t in trees)
    column = list(model.classes_).index(True)

    def stack(get: Callable[[Any], np.ndarray], fill: float) -> np.ndarray:
        rows = np.full((len(trees), width), fill, dtype=np.float64)
        for i, tree in enumerate(trees):
            rows[i, :tree.node_count] = get(tree)
        return rows

    values = stack(lambda t: t.value[:, 0, column] / t.value[:, 0, :].sum(axis=1), 0.0)
    return Forest(stack(lambda t: t.feature, -1).astype(np.intp),
                  stack(lambda t: t.threshold, 0.0),
                  stack(lambda t: t.children_left, 0).astype(np.intp),
                  stack(lambda t: t.children_right, 0).astype(np.intp), values)


def forest_out_of_fold(x: np.ndarray, positive: np.ndarray, folds: int = 5,
                       seed: int = 0) -> np.ndarray:
    """Each example's forest score from a forest fitted without it (k folds)."""
    order = np.random.default_rng(seed).permutation(len(positive))
    result = np.zeros(len(positive))
    for fold in range(folds):
        held = order[fold::folds]
        kept = np.setdiff1d(order, held)
        forest = fit_forest(x[kept], positive[kept])
        result[held] = [forest.score(row) for row in x[held]]
    return result
