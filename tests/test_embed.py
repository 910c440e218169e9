"""The embedder: one model per process, concurrent requests micro-batched off the loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from proxy.embed import DIMENSIONS, Embedder, embed_dtype, has_native_bf16

TEXTS = [f"how do I look after a {thing}?" for thing in (
    "cactus", "goldfish", "sourdough starter", "leather jacket", "bonsai tree", "wool sweater",
    "cast iron pan", "vinyl record", "hamster", "rose bush")] * 4


async def test_concurrent_embeds_are_encoded_in_few_batches() -> None:
    embedder = Embedder(max_batch=32)
    await embedder.wait_ready()
    await asyncio.gather(*(embedder.embed(t) for t in TEXTS))
    await embedder.aclose()
    assert embedder.encode_calls == 2  # 40 waiting texts: a batch of 32, then 8


async def test_batched_vectors_equal_one_by_one_vectors() -> None:
    embedder = Embedder()
    alone = [await embedder.embed(t) for t in TEXTS[:10]]
    together = await asyncio.gather(*(embedder.embed(t) for t in TEXTS[:10]))
    await embedder.aclose()
    similarity = np.stack(alone) @ np.stack(together).T
    # each caller gets its own row back; batching (padding) changes bfloat16 rounding only
    assert (similarity.argmax(axis=1) == np.arange(10)).all()
    assert similarity.diagonal().min() >= 0.9999


async def test_vectors_are_unit_length_float32_rows() -> None:
    embedder = Embedder()
    rows = await embedder.embed_many(["a cat", "a dog", "a tax return"])
    await embedder.aclose()
    assert rows.shape == (3, DIMENSIONS) and rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert rows[0] @ rows[1] > rows[0] @ rows[2]


async def test_cached_texts_are_encoded_once() -> None:
    embedder = Embedder()
    await embedder.embed_cached(["kettle", "teapot"])
    calls = embedder.encode_calls
    found = await embedder.embed_cached(["teapot", "kettle"])
    await embedder.aclose()
    assert embedder.encode_calls == calls and set(found) == {"kettle", "teapot"}


@pytest.mark.parametrize(("flags", "native"), [
    ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),
    ("fpu avx2 amx_bf16 amx_tile", True),
    ("fpu avx2 avx512f avx512_vnni", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, flags: str,
                                                native: bool) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n")
    assert has_native_bf16(str(info)) is native
    assert has_native_bf16(str(tmp_path / "missing")) is False


def test_dtype_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_EMBED_DTYPE", "float32")
    assert embed_dtype() == "float32"
    monkeypatch.setenv("PROXY_EMBED_DTYPE", "bfloat16")
    assert embed_dtype() == "bfloat16"
    for automatic in ("auto", ""):  # empty: as compose leaves an unset ${VAR}
        monkeypatch.setenv("PROXY_EMBED_DTYPE", automatic)
        assert embed_dtype() == ("bfloat16" if has_native_bf16() else "float32")
    monkeypatch.setenv("PROXY_EMBED_DTYPE", "float16")
    with pytest.raises(ValueError, match="PROXY_EMBED_DTYPE"):
        embed_dtype()


async def test_bfloat16_vectors_stay_comparable_with_float32_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = {}
    for dtype in ("float32", "bfloat16"):
        monkeypatch.setenv("PROXY_EMBED_DTYPE", dtype)
        embedder = Embedder()
        assert embedder.dtype == dtype
        rows[dtype] = await embedder.embed_many(TEXTS[:10])
        await embedder.aclose()
    agreement = np.sum(rows["float32"] * rows["bfloat16"], axis=1)
    assert agreement.min() >= 0.999
    assert rows["bfloat16"].dtype == np.float32
