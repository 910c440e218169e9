"""The small learned models: softmax regression, out-of-fold scores, calibration, Once."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from proxy.learn import Once, calibrate, fit, out_of_fold


def blobs(n: int = 200, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Two overlapping Gaussian clouds in 5 dimensions."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, (n, 5))
    b = rng.normal(1.5, 1.0, (n, 5))
    return np.vstack([a, b]), ["a"] * n + ["b"] * n


def test_fit_separates_classes_better_than_chance() -> None:
    x, labels = blobs()
    model = fit(x, labels)
    predicted = [model.classes[i] for i in model.scores(x).argmax(axis=1)]
    accuracy = np.mean([p == t for p, t in zip(predicted, labels)])
    assert model.classes == ("a", "b")
    assert accuracy > 0.9
    assert np.allclose(model.scores(x).sum(axis=1), 1.0, atol=1e-5)


def test_out_of_fold_scores_are_worse_than_in_sample_on_noise() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 40))
    labels = ["a" if i % 2 else "b" for i in range(120)]
    in_sample = fit(x, labels).scores(x)
    oof = out_of_fold(x, labels)
    truth = np.array([lab == "b" for lab in labels])

    def accuracy(p: np.ndarray) -> float:
        return float(np.mean((p[:, 1] > 0.5) == truth))

    # pure noise: the fitted model partly memorizes it, the held-out folds cannot
    assert accuracy(oof) < 0.6
    assert accuracy(in_sample) - accuracy(oof) > 0.15


@pytest.mark.parametrize("max_error", [0.0, 0.1, 0.25])
def test_calibrate_keeps_the_error_rate_above_the_threshold(max_error: float) -> None:
    rng = np.random.default_rng(2)
    scores = rng.random(500)
    positive = rng.random(500) < scores  # higher scores are more often positive
    t = calibrate(scores, positive, max_error)
    taken = scores >= t
    assert taken.any()
    assert (~positive[taken]).mean() <= max_error
    # one step lower would break the bound (the threshold is the lowest that holds)
    lower = scores[scores < t]
    if lower.size:
        below = scores >= lower.max()
        assert (~positive[below]).mean() > max_error or below.sum() == taken.sum()


def test_calibrate_with_no_safe_threshold_admits_nothing() -> None:
    scores = np.array([0.9, 0.8, 0.7])
    assert calibrate(scores, np.array([False, False, False]), 0.1) > 0.9


async def test_once_runs_the_work_once_for_concurrent_callers() -> None:
    calls = []

    async def work() -> int:
        calls.append(1)
        await asyncio.sleep(0)
        return 42

    once = Once(work)
    assert once.done is None
    assert await asyncio.gather(once.get(), once.get(), once.get()) == [42, 42, 42]
    assert calls == [1]
    assert once.done == 42
