"""Fitted models kept on disk: keys, round trips, and a cache that cannot be used."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from proxy import fit_cache
from proxy.learn import fit, fit_forest
from proxy.pipeline.semantic import pair_model, standalone
from proxy.pipeline.semantic.pair_model import FittedVerifier
from proxy.pipeline.semantic.standalone import CLASSES, FittedClassifier
from proxy.testing import LiveProxy

RNG = np.random.default_rng(7)
X = RNG.normal(size=(60, 5))
POSITIVE = X[:, 0] + 0.3 * RNG.normal(size=60) > 0


@pytest.fixture(autouse=True)
def cache_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROXY_FIT_CACHE", str(tmp_path / "fitted"))
    return tmp_path / "fitted"


def test_a_stored_verifier_scores_as_the_fitted_one() -> None:
    fitted = FittedVerifier(fit_forest(X, POSITIVE), 0.61, 0.02, 0.33)
    key = fit_cache.fit_key("pair-verifier", ("pairs",), 0.75, 0.02, "onnx-float32")
    assert fit_cache.load(key) is None
    fit_cache.save(key, fitted.to_arrays())
    stored = fit_cache.load(key)
    assert stored is not None
    loaded = FittedVerifier.from_arrays(stored)
    assert (loaded.threshold, loaded.oof_wrong_rate, loaded.oof_recall) == (0.61, 0.02, 0.33)
    assert [loaded.model.score(row) for row in X] == [fitted.model.score(row) for row in X]


def test_a_stored_classifier_scores_as_the_fitted_one() -> None:
    labels = [CLASSES[int(i) % len(CLASSES)] for i in RNG.integers(0, 4, size=60)]
    fitted = FittedClassifier(fit(X, labels, 1.0, classes=CLASSES), 0.65, 0.98, 0.75)
    key = fit_cache.fit_key("context-classifier", ("examples",), 0.02, "numpy-float32")
    fit_cache.save(key, fitted.to_arrays())
    stored = fit_cache.load(key)
    assert stored is not None
    loaded = FittedClassifier.from_arrays(stored)
    assert loaded.model.classes == fitted.model.classes
    assert np.array_equal(loaded.model.scores(X), fitted.model.scores(X))
    assert loaded.threshold == 0.65


def test_every_input_and_the_kind_change_the_key() -> None:
    base = fit_cache.fit_key("pair-verifier", ("a",), 0.75, 0.02, "onnx-float32")
    assert base == fit_cache.fit_key("pair-verifier", ("a",), 0.75, 0.02, "onnx-float32")
    others = {fit_cache.fit_key("pair-verifier", ("b",), 0.75, 0.02, "onnx-float32"),
              fit_cache.fit_key("pair-verifier", ("a",), 0.8, 0.02, "onnx-float32"),
              fit_cache.fit_key("pair-verifier", ("a",), 0.75, 0.05, "onnx-float32"),
              fit_cache.fit_key("pair-verifier", ("a",), 0.75, 0.02, "torch-bfloat16"),
              fit_cache.fit_key("context-classifier", ("a",), 0.75, 0.02, "onnx-float32")}
    assert base not in others and len(others) == 5


def test_an_unreadable_entry_is_refitted_and_an_unwritable_cache_only_logged(
        cache_in: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    key = fit_cache.fit_key("pair-verifier", ("a",))
    cache_in.mkdir(parents=True)
    (cache_in / f"{key}.npz").write_bytes(b"not a zip file")
    blocker = cache_in / "a-file"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, "proxy.learn"):
        assert fit_cache.load(key) is None
        monkeypatch.setenv("PROXY_FIT_CACHE", str(blocker / "fitted"))  # under a file
        fit_cache.save("other", {"x": np.zeros(2)})
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "unreadable fitted model" in messages
    assert "could not keep the fitted model other" in messages


def test_build_embedder_fits_the_models_a_proxy_then_loads(
        cache_in: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    rules = Path(__file__).resolve().parents[1] / "rules" / "config.toml"
    subprocess.run([sys.executable, "-m", "proxy", "build-embedder", "--rules", str(rules)],
                   check=True, env={**os.environ, "PROXY_FIT_CACHE": str(cache_in)},
                   capture_output=True, timeout=900)
    assert sorted(p.name.split("-")[0] for p in cache_in.glob("*.npz")) == ["context", "pair"]
    monkeypatch.setattr(standalone, "_FITTED", {})  # nothing fitted in this process yet
    monkeypatch.setattr(pair_model, "_FITTED", {})
    with caplog.at_level(logging.INFO), LiveProxy(cache_in.parent, rules=rules.read_text()
                                                  ) as live:
        live.wait_ready()
    fitted_here = [r.getMessage() for r in caplog.records
                   if r.getMessage().startswith(("context classifier:", "pair verifier:"))]
    assert fitted_here == []  # both loaded from the cache build-embedder filled
