"""The vector index above its ANN size: IVF search, switching, removal, rebuilds."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from proxy.embed import DIMENSIONS
from proxy.pipeline.semantic import index as semantic_index
from proxy.pipeline.semantic.index import Entry, SemanticEntries, VectorIndex
from proxy.store.kv import SqliteKV
from proxy.store.sqlite import open_db

ROWS = 2_000
SCOPE = ("alice", "gpt-4o", "instructions", "")


def unit_rows(n: int, seed: int) -> np.ndarray:
    """`n` random unit vectors."""
    rows = np.random.default_rng(seed).standard_normal((n, DIMENSIONS)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def near(rows: np.ndarray, seed: int) -> np.ndarray:
    """Each row nudged a little (a reworded question's vector)."""
    nudged = rows + 0.3 * unit_rows(len(rows), seed)
    return nudged / np.linalg.norm(nudged, axis=1, keepdims=True)


async def filled(n: int, ann_min_rows: int) -> VectorIndex:
    """An index holding `n` random rows under keys "0".."n-1", its ANN built if due."""
    index = VectorIndex(ann_min_rows=ann_min_rows)
    for i, row in enumerate(unit_rows(n, seed=1)):
        index.add(str(i), row)
    if index.wants_ann_build():
        await index.build_ann()
    return index


@pytest.mark.parametrize(("rows", "uses_ann"), [(999, False), (1_000, True)])
async def test_the_ann_index_is_built_from_the_size_threshold_on(rows: int,
                                                                  uses_ann: bool) -> None:
    index = await filled(rows, ann_min_rows=1_000)
    assert (index.ann is not None) is uses_ann


async def test_ann_top1_equals_brute_force_on_near_duplicates() -> None:
    exact, approximate = await filled(ROWS, ann_min_rows=10**9), await filled(ROWS, 1_000)
    assert approximate.ann is not None
    for query in near(unit_rows(ROWS, seed=1)[:200], seed=2):
        want, got = exact.search(query, 1), approximate.search(query, 1)
        assert got[0][0] == want[0][0]
        assert got[0][1] == pytest.approx(want[0][1], abs=1e-5)


async def test_removed_keys_are_never_returned() -> None:
    index = await filled(ROWS, ann_min_rows=1_000)
    query = unit_rows(ROWS, seed=1)[7]
    index.remove("7")
    assert "7" not in [key for key, _ in index.search(query, 4)]


async def test_a_replaced_vector_is_found_under_its_new_value() -> None:
    index = await filled(ROWS, ann_min_rows=1_000)
    moved = unit_rows(1, seed=9)[0]
    index.add("7", moved)
    assert index.search(moved, 1)[0][0] == "7"
    assert len(index) == ROWS


async def test_rows_added_after_the_build_are_found() -> None:
    index = await filled(ROWS, ann_min_rows=1_000)
    extra = unit_rows(1, seed=11)[0]
    index.add("extra", extra)
    assert index.search(extra, 1)[0][0] == "extra"


async def test_removing_a_quarter_asks_for_a_rebuild_that_clears_the_dead() -> None:
    index = await filled(ROWS, ann_min_rows=1_000)
    for i in range(ROWS // 4 + 1):
        index.remove(str(i))
    assert index.wants_ann_build()
    await index.build_ann()
    assert index.ann is not None and index.ann.dead == 0 and not index.wants_ann_build()


async def test_shrinking_below_half_the_threshold_falls_back_to_brute_force() -> None:
    index = await filled(ROWS, ann_min_rows=1_000)
    for i in range(ROWS - 499):
        index.remove(str(i))
    assert index.ann is None
    assert index.search(unit_rows(ROWS, seed=1)[-1], 1)[0][0] == str(ROWS - 1)


def entry(i: int, vector: np.ndarray) -> Entry:
    """A stored answer of scope SCOPE."""
    return Entry(f"k{i}", SCOPE, f"question {i}", vector, {"choices": []}, time.time(), None)


async def test_stored_entries_are_indexed_in_one_batch_at_start_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semantic_index, "ANN_MIN_ROWS", 100)
    vectors = unit_rows(150, seed=3)
    db = await open_db(str(tmp_path / "kv.db"))
    kv = SqliteKV(db)
    await kv.start()
    first = SemanticEntries(kv, max_entries=1_000)
    for i, vector in enumerate(vectors):
        await first.add(entry(i, vector), ttl=None)
    await first.aclose()
    restarted = SemanticEntries(kv, max_entries=1_000)
    await restarted.ensure_loaded("alice")
    found = await restarted.search(SCOPE, vectors[42], 1)
    await db.close()
    assert restarted._indexes[SCOPE].ann is not None
    assert found[0][0].key == "k42"
