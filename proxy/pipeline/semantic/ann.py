"""Approximate nearest neighbours for large scopes: a faiss inverted-file (IVF-Flat) index.

Chosen by measurement (bench/cache.py semantic; 100k x 384 on the shared 2-core machine):
faiss IVF-Flat built in about 2 s and answered in 0.2-0.5 ms with the same top-1 as brute
force on near-duplicate queries, while HNSW (usearch, faiss) took 20-475 s to build 100k
vectors and missed 13-27% of those top-1 neighbours at comparable settings. The index
stores full float32 vectors, so its scores are exact cosine similarities; only the
choice of which cells to scan is approximate (a missed neighbour is a cache miss, never a
wrong answer).
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from proxy.embed import DIMENSIONS

faiss.omp_set_num_threads(1)  # one query at a time; threads only contend on 2 cores

TRAIN_PER_CELL = 40  # k-means training sample per cell (faiss wants at least 39)
PROBED_CELLS = 16


class IvfIndex:
    """Unit vectors under integer ids, grouped into cells around k-means centroids."""

    def __init__(self, index: faiss.IndexIVFFlat, quantizer: faiss.Index, size: int) -> None:
        self._index = index
        self._quantizer = quantizer  # the IVF index refers to it: keep it alive
        self.built_size = size
        self.dead = 0  # ids removed since the build (still stored, filtered by the caller)

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, seed: int = 0) -> IvfIndex:
        """Train cells on (a sample of) `vectors` and add them all (blocking: off-loop)."""
        size = len(ids)
        cells = max(1, min(int(math.sqrt(size)), size // TRAIN_PER_CELL))
        quantizer = faiss.IndexFlatIP(DIMENSIONS)
        index = faiss.IndexIVFFlat(quantizer, DIMENSIONS, cells, faiss.METRIC_INNER_PRODUCT)
        sample = min(size, cells * TRAIN_PER_CELL)
        rows = np.random.default_rng(seed).choice(size, sample, replace=False)
        index.train(np.ascontiguousarray(vectors[np.sort(rows)], dtype=np.float32))
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                           np.asarray(ids, dtype=np.int64))
        index.nprobe = min(PROBED_CELLS, cells)
        return cls(index, quantizer, size)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors to their nearest cells (the cells are not retrained)."""
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32).reshape(
            -1, DIMENSIONS), np.asarray(ids, dtype=np.int64))

    def search(self, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to `k` (id, cosine) pairs from the probed cells, best first."""
        scores, ids = self._index.search(
            np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1), k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
