"""The engines that can run all-MiniLM-L6-v2, each behind `encode(texts) -> unit vectors`.

- `onnx`: ONNX Runtime over a float32 export of the packaged weights, made once by
  `python -m proxy build-embedder` into a cache directory (proxy/embed_export.py; the
  export needs torch, serving does not).
- `onnx-int8`: the same export with int8 weights: about 3x faster for one text, but
  its vectors move (mean cosine 0.992 with float32) and the pair verifier fitted on
  them finds about a third fewer semantic hits on held-out pairs. Opt-in only.
- `numpy`: plain numpy over the packaged safetensors (proxy/embed_numpy.py); no torch,
  no build step.
- `torch`: sentence-transformers, under bfloat16 autocast where the CPU has native
  bfloat16 (see `embed_dtype`), else float32.

`auto` picks the first of AUTO_ORDER whose packages are installed (and, for ONNX, whose
export exists). All but `onnx-int8` keep the model's vector space (cosine >= 0.9999
with torch float32), so stored entries stay valid across them: the numbers are in
bench/results/embed_backends.md. Each engine's `variant` names it and its precision,
so models fitted on one engine's vectors are not reused for another's.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from proxy.embed_inputs import embed_threads, length_sorted_batches, load_tokenizer

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "onnx-int8", "numpy", "torch")
AUTO_ORDER = ("onnx", "numpy", "torch")
TORCH_SUB_BATCH = {"float32": 8, "bfloat16": 32}
ONNX_SUB_BATCH = 16


class Backend(Protocol):
    """An engine that embeds texts (blocking: called on the embedder's worker thread)."""

    variant: str

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        ...


def has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bfloat16 in hardware (x86 AVX512_BF16 or AMX-BF16)."""
    try:
        with open(cpuinfo) as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def embed_dtype() -> str:
    """The precision torch runs the model in: PROXY_EMBED_DTYPE, else bfloat16 when native."""
    configured = os.environ.get("PROXY_EMBED_DTYPE") or "auto"
    if configured in TORCH_SUB_BATCH:
        return configured
    if configured != "auto":
        raise ValueError(f"PROXY_EMBED_DTYPE must be auto, float32 or bfloat16, "
                         f"not {configured!r}")
    return "bfloat16" if has_native_bf16() else "float32"


def installed(module: str) -> bool:
    """True when `module` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def available(backend: str, model_path: str) -> bool:
    """True when `backend` can run here without building or downloading anything."""
    from proxy.embed_export import onnx_path

    if backend == "torch":
        return installed("torch") and installed("sentence_transformers")
    if backend == "numpy":
        return installed("tokenizers") and installed("safetensors")
    return installed("onnxruntime") and installed("tokenizers") and \
        onnx_path(model_path, quantized=backend == "onnx-int8").exists()


def resolve_backend(choice: str, model_path: str) -> str:
    """The engine to use for `choice` (auto, or one of BACKENDS), torch when it cannot run."""
    if choice not in ("auto", *BACKENDS):
        raise ValueError(f"embedding backend must be auto or one of {', '.join(BACKENDS)}, "
                         f"not {choice!r}")
    wanted = AUTO_ORDER if choice == "auto" else (choice,)
    for backend in wanted:
        if available(backend, model_path):
            return backend
    if choice != "auto":
        log.warning("embedding backend %r is not available here; using torch", choice)
    return "torch"


def load_backend(backend: str, model_path: str) -> Backend:
    """A loaded engine (blocking: call off the event loop)."""
    if backend == "numpy":
        from proxy.embed_numpy import NumpyMiniLM

        return NumpyMiniLM(model_path)
    if backend in ("onnx", "onnx-int8"):
        from proxy.embed_export import onnx_path

        return OnnxBackend(onnx_path(model_path, quantized=backend == "onnx-int8"), model_path)
    return TorchBackend(model_path)


class OnnxBackend:
    """ONNX Runtime on an exported (pooled and normalized) model, single-threaded ops."""

    def __init__(self, onnx_file: Path, model_path: str) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = embed_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.tokenizer = load_tokenizer(model_path)
        self.variant = "onnx-int8" if onnx_file.name.endswith(".int8.onnx") else "onnx-float32"

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        vectors = np.empty((len(texts), 384), dtype=np.float32)
        for rows, tokens, mask in length_sorted_batches(self.tokenizer, texts, ONNX_SUB_BATCH):
            vectors[rows] = self.session.run(
                None, {"input_ids": tokens, "attention_mask": mask})[0]
        return vectors


class TorchBackend:
    """sentence-transformers on torch (one intra-op thread per spare core)."""

    def __init__(self, model_path: str) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(embed_threads())
        self.model = SentenceTransformer(model_path, device="cpu")
        self.dtype = embed_dtype()
        self.variant = f"torch-{self.dtype}"

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
            vectors = self.model.encode(texts, normalize_embeddings=True,
                                        batch_size=TORCH_SUB_BATCH[self.dtype],
                                        convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)
