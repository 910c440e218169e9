"""What every embedding engine shares: the tokenizer, length-sorted padded batches, and
how many threads an engine may use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length
# padded tokens per forward pass: 16 texts of 64 tokens, or 4 of 256 (the attention
# scores of 16 x 256 tokens alone take 50 MB, which the ONNX arena then keeps)
BATCH_TOKENS = 1024


def embed_threads() -> int:
    """Intra-op threads for the engine: PROXY_EMBED_THREADS, else half the cores."""
    configured = os.environ.get("PROXY_EMBED_THREADS", "")
    return int(configured) if configured.isdigit() and int(configured) > 0 \
        else max(1, (os.cpu_count() or 1) // 2)


def load_tokenizer(model_path: str | Path) -> Any:
    """The model's fast tokenizer, truncating like sentence-transformers and not padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    return tokenizer


def length_sorted_batches(tokenizer: Any, texts: list[str],
                          size: int) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
    """Texts tokenized, sorted by length and cut into padded batches of at most `size`
    texts and BATCH_TOKENS padded tokens (long texts go in small batches: attention's
    memory grows with the square of the length): (the texts' positions, token ids,
    attention mask) each."""
    ids = [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=True)]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    groups: list[list[int]] = []
    for i in order:  # ascending: the text being added is the longest of its group
        if groups and len(groups[-1]) < size and \
                (len(groups[-1]) + 1) * len(ids[i]) <= BATCH_TOKENS:
            groups[-1].append(i)
        else:
            groups.append([i])
    batches = []
    for rows in groups:
        longest = len(ids[rows[-1]])
        tokens = np.zeros((len(rows), longest), dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for row, i in enumerate(rows):
            tokens[row, :len(ids[i])] = ids[i]
            mask[row, :len(ids[i])] = 1
        batches.append((rows, tokens, mask))
    return batches
