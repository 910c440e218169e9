"""The embedder: one model per process, concurrent requests micro-batched off the loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import proxy.embed
from proxy.embed import DIMENSIONS, Embedder, default_model_path, load_engine
from proxy.embed_backends import embed_dtype, has_native_bf16, resolve_backend

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
        embedder = Embedder(backend="torch")
        rows[dtype] = await embedder.embed_many(TEXTS[:10])
        await embedder.aclose()
        assert embedder.variant == f"torch-{dtype}"
    agreement = np.sum(rows["float32"] * rows["bfloat16"], axis=1)
    assert agreement.min() >= 0.999
    assert rows["bfloat16"].dtype == np.float32


# short and long, cased, accented, CJK, emoji, code, and past the 256-token truncation
AGREEMENT_TEXTS = [
    "hi", "What is the capital of France?", "how do I reverse a linked list in Rust",
    "Ünïcödé façade naïve café", "東京で一番おいしいラーメン屋はどこですか", "ok 👍🎉 thanks!!",
    "def f(x):\n    return x ** 2  # square it", "The QUICK brown fox, jumps; over: the lazy dog.",
    "i tried what you said and it made the anxiety worse, now what?",
    "compare " + "the budget of the last three quarters and " * 60 + "summarise",
]


@pytest.fixture(scope="module")
def torch_float32_rows() -> np.ndarray:
    """The reference: sentence-transformers in float32."""
    from proxy.embed_backends import TorchBackend

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROXY_EMBED_DTYPE", "float32")
        return TorchBackend(default_model_path()).encode(AGREEMENT_TEXTS)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding ONNX files built by the CLI from the packaged weights."""
    from proxy.__main__ import main

    cache = tmp_path_factory.mktemp("embedder")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROXY_EMBED_CACHE", str(cache))
        assert main(["build-embedder", "--embedder-only"]) == 0
    return cache


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of unit vectors."""
    return np.einsum("ij,ij->i", a, b)


def test_numpy_vectors_match_torch(torch_float32_rows: np.ndarray) -> None:
    from proxy.embed_backends import load_backend

    engine = load_backend("numpy", default_model_path())
    rows = engine.encode(AGREEMENT_TEXTS)
    assert engine.variant == "numpy-float32" and rows.dtype == np.float32
    assert cosines(rows, torch_float32_rows).min() >= 0.9999
    # one text alone (no padding) gives the same vector as inside a padded batch
    alone = np.concatenate([engine.encode([t]) for t in AGREEMENT_TEXTS])
    assert cosines(alone, rows).min() >= 0.9999


@pytest.mark.parametrize(("backend", "variant", "minimum"), [
    ("onnx", "onnx-float32", 0.9999), ("onnx-int8", "onnx-int8", 0.95)])
def test_onnx_vectors_match_torch(onnx_cache: Path, torch_float32_rows: np.ndarray,
                                  monkeypatch: pytest.MonkeyPatch, backend: str, variant: str,
                                  minimum: float) -> None:
    from proxy.embed_backends import load_backend

    monkeypatch.setenv("PROXY_EMBED_CACHE", str(onnx_cache))
    assert resolve_backend(backend, default_model_path()) == backend
    engine = load_backend(backend, default_model_path())
    rows = engine.encode(AGREEMENT_TEXTS)
    assert engine.variant == variant
    assert cosines(rows, torch_float32_rows).min() >= minimum


def test_auto_prefers_built_onnx_then_numpy(onnx_cache: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_EMBED_CACHE", str(onnx_cache))
    assert resolve_backend("auto", default_model_path()) == "onnx"
    monkeypatch.setenv("PROXY_EMBED_CACHE", str(tmp_path))  # nothing built there
    assert resolve_backend("auto", default_model_path()) == "numpy"
    with pytest.raises(ValueError, match="embedding backend"):
        resolve_backend("tensorflow", default_model_path())


async def test_an_unbuilt_onnx_backend_falls_back_to_torch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_EMBED_CACHE", str(tmp_path))
    monkeypatch.delenv("PROXY_EMBED_BACKEND", raising=False)
    embedder = Embedder(backend="onnx")
    vector = await embedder.embed("a cat")
    await embedder.aclose()
    assert embedder.backend == "torch" and embedder.variant.startswith("torch-")
    assert vector.shape == (DIMENSIONS,)


def test_an_engine_that_fails_to_load_falls_back_to_torch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.embed_export import onnx_path

    monkeypatch.setenv("PROXY_EMBED_CACHE", str(tmp_path))
    monkeypatch.setattr(proxy.embed, "_engines", {})
    broken = onnx_path(default_model_path(), quantized=False)
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not an onnx model")
    assert resolve_backend("onnx", default_model_path()) == "onnx"
    assert load_engine("onnx").variant.startswith("torch-")


def test_the_environment_overrides_the_configured_backend(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_EMBED_BACKEND", "numpy")
    assert Embedder(backend="torch").backend == "numpy"
    monkeypatch.delenv("PROXY_EMBED_BACKEND")
    assert Embedder(backend="torch").backend == "torch"


def test_the_numpy_engine_never_imports_torch() -> None:
    code = ("import sys\nfrom proxy.embed import load_engine\n"
            "load_engine('numpy').encode(['hello'])\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.stdout.strip() == "False"
