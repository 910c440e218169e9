"""all-MiniLM-L6-v2 in plain numpy: the packaged safetensors and tokenizer, no torch.

The same computation as sentence-transformers' BertModel + mean pooling +
normalize (float32 throughout), so its vectors share torch's vector space
(cosine >= 0.9999 with torch float32 on the tests' texts). It loads in about a
second and takes the weights' ~90 MB and little else: numbers in
bench/results/embed_backends.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from proxy.embed_inputs import embed_threads, length_sorted_batches, load_tokenizer

SUB_BATCH = 16  # texts per padded forward pass (sorted by length, so little padding)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function to float32 precision (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7)."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (
        -1.453152027 + t * 1.061405429))))
    result: np.ndarray = sign * (1.0 - poly * np.exp(-a * a))
    return result


def gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact (erf) GELU."""
    result: np.ndarray = 0.5 * x * (1.0 + erf(x * np.float32(1 / math.sqrt(2))))
    return result


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis."""
    mean = x.mean(-1, keepdims=True)
    centered = x - mean
    variance = (centered * centered).mean(-1, keepdims=True)
    normed: np.ndarray = centered / np.sqrt(variance + eps) * weight + bias
    return normed


class _Layer:
    """One transformer block's weights, laid out for `x @ W` (Q, K and V fused)."""

    def __init__(self, weights: dict[str, np.ndarray], prefix: str) -> None:
        def w(name: str) -> np.ndarray:
            return weights[f"{prefix}.{name}"]

        attention = "attention.self"
        self.qkv = np.ascontiguousarray(np.concatenate(
            [w(f"{attention}.{part}.weight") for part in ("query", "key", "value")]).T)
        self.qkv_bias = np.concatenate(
            [w(f"{attention}.{part}.bias") for part in ("query", "key", "value")])
        self.out = np.ascontiguousarray(w("attention.output.dense.weight").T)
        self.out_bias = w("attention.output.dense.bias")
        self.norm1 = (w("attention.output.LayerNorm.weight"), w("attention.output.LayerNorm.bias"))
        self.up = np.ascontiguousarray(w("intermediate.dense.weight").T)
        self.up_bias = w("intermediate.dense.bias")
        self.down = np.ascontiguousarray(w("output.dense.weight").T)
        self.down_bias = w("output.dense.bias")
        self.norm2 = (w("output.LayerNorm.weight"), w("output.LayerNorm.bias"))


class NumpyMiniLM:
    """A BERT sentence encoder (mean pooled, unit length) run with numpy matrix products."""

    def __init__(self, path: str | Path) -> None:
        from safetensors.numpy import load_file
        from threadpoolctl import ThreadpoolController

        # BLAS threads spin-wait for each other on busy cores: 8.6 ms for one text with
        # one thread against 31 ms with two on the shared 2-core machine
        self.blas = ThreadpoolController()
        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        self.heads = config["num_attention_heads"]
        self.eps = config["layer_norm_eps"]
        weights = load_file(str(path / "model.safetensors"))
        self.words = weights["embeddings.word_embeddings.weight"]
        self.positions = weights["embeddings.position_embeddings.weight"]
        self.token_type = weights["embeddings.token_type_embeddings.weight"][0]
        self.norm = (weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
        self.layers = [_Layer(weights, f"encoder.layer.{i}")
                       for i in range(config["num_hidden_layers"])]
        self.tokenizer = load_tokenizer(path)
        self.variant = "numpy-float32"

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text (in the order given)."""
        vectors = np.empty((len(texts), self.words.shape[1]), dtype=np.float32)
        with self.blas.limit(limits=embed_threads(), user_api="blas"):
            for rows, tokens, mask in length_sorted_batches(self.tokenizer, texts, SUB_BATCH):
                vectors[rows] = self._forward(tokens, mask.astype(np.float32))
        return vectors

    def _forward(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Pooled, normalized vectors of padded token ids (mask: 1 for a real token)."""
        batch, longest = tokens.shape
        x = self.words[tokens] + self.positions[:longest] + self.token_type
        x = layer_norm(x, *self.norm, self.eps).reshape(batch * longest, -1)
        # padded keys get a large negative score (exp underflows to 0), as in transformers
        key_bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        for layer in self.layers:
            x = self._block(layer, x, key_bias, batch, longest)
        hidden = x.reshape(batch, longest, -1)
        pooled = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        normed: np.ndarray = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True),
                                                 1e-12)
        return normed

    def _block(self, layer: _Layer, x: np.ndarray, key_bias: np.ndarray,
               batch: int, longest: int) -> np.ndarray:
        """One transformer block on the flattened (batch * tokens, hidden) activations."""
        hidden = x.shape[1]
        head_size = hidden // self.heads
        qkv = (x @ layer.qkv + layer.qkv_bias).reshape(batch, longest, 3, self.heads, head_size)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each (batch, heads, tokens, head_size)
        scores = q @ k.transpose(0, 1, 3, 2) * np.float32(1 / math.sqrt(head_size)) + key_bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * longest, hidden)
        x = layer_norm(context @ layer.out + layer.out_bias + x, *layer.norm1, self.eps)
        up = gelu(x @ layer.up + layer.up_bias)
        return layer_norm(up @ layer.down + layer.down_bias + x, *layer.norm2, self.eps)
