"""Speed, memory and agreement of the embedding engines (proxy/embed_backends.py).

    python -m proxy build-embedder   # the ONNX files (once)
    python bench/embed_backends.py [--json bench/results/embed_backends.json]

Each engine runs in a fresh child process (so its RSS is its own): load time, RSS
after load (and whether torch got imported), p50 of one text at a time over the
held-out messages, texts/s in batches of 32 over the same texts, and the vectors.
The parent compares every engine's vectors with torch float32 (the reference the
shipped models were fitted with): the smallest cosine over all texts.
Recall and wrong answers on held-out pairs: `PROXY_EMBED_BACKEND=X python bench/learned.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# (row name, PROXY_EMBED_BACKEND, PROXY_EMBED_DTYPE)
ENGINES = [("torch float32", "torch", "float32"), ("torch bfloat16", "torch", "bfloat16"),
           ("onnx float32", "onnx", ""), ("onnx int8", "onnx-int8", ""),
           ("numpy float32", "numpy", "")]
BATCH = 32


def texts() -> list[str]:
    """The held-out messages and pair texts (a few hundred, none used for fitting)."""
    data = ROOT / "bench" / "data"
    rows = [json.loads(line) for line in (data / "heldout_messages.jsonl").open()]
    pairs = [json.loads(line) for line in (data / "heldout_pairs.jsonl").open()]
    found = [r["text"] for r in rows] + [p[side] for p in pairs for side in ("a", "b")]
    return list(dict.fromkeys(found))


def rss_mb() -> float:
    """This process's resident set size in MB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def measure(backend: str, out: str) -> None:
    """Child side: load `backend`, time it, save its vectors and figures to `out`."""
    from proxy.embed import load_engine

    start = time.perf_counter()
    engine = load_engine(backend)
    load_s = time.perf_counter() - start
    figures = {"variant": engine.variant, "load_s": load_s, "rss_mb": rss_mb(),
               "torch_imported": "torch" in sys.modules}
    sample = texts()
    engine.encode(sample[:BATCH])  # warm-up
    one = []
    for text in sample[:200]:
        start = time.perf_counter()
        engine.encode([text])
        one.append(time.perf_counter() - start)
    start = time.perf_counter()
    vectors = np.concatenate([engine.encode(sample[i:i + BATCH])
                              for i in range(0, len(sample), BATCH)])
    figures |= {"one_text_p50_ms": statistics.median(one) * 1000,
                "texts_per_s": len(sample) / (time.perf_counter() - start),
                "rss_after_mb": rss_mb(), "load_average": os.getloadavg()[0]}
    np.save(out + ".npy", vectors)
    Path(out + ".json").write_text(json.dumps(figures))


def run(name: str, backend: str, dtype: str, workdir: str) -> tuple[dict, np.ndarray]:
    """Measure one engine in a child process."""
    out = os.path.join(workdir, backend + dtype)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "PROXY_EMBED_DTYPE": dtype or "auto"}
    subprocess.run([sys.executable, __file__, "--child", backend, out], env=env, check=True)
    return json.loads(Path(out + ".json").read_text()), np.load(out + ".npy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(*args.child)
        return
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        reference = None
        for name, backend, dtype in ENGINES:
            figures, vectors = run(name, backend, dtype, workdir)
            reference = vectors if reference is None else reference
            cosines = np.einsum("ij,ij->i", vectors, reference)
            figures |= {"min_cosine_vs_torch_fp32": float(cosines.min()),
                        "mean_cosine_vs_torch_fp32": float(cosines.mean())}
            results[name] = figures
            print(f"{name}: {figures}", flush=True)
    print(f"\n{len(texts())} held-out texts, batches of {BATCH}\n")
    print("| engine | texts/s (batch) | p50 one text | RSS after load | load | torch imported "
          "| min cosine vs torch fp32 |")
    print("|---|---|---|---|---|---|---|")
    for name, f in results.items():
        print(f"| {name} | {f['texts_per_s']:.0f} | {f['one_text_p50_ms']:.2f} ms "
              f"| {f['rss_mb']:.0f} MB | {f['load_s']:.1f} s | {f['torch_imported']} "
              f"| {f['min_cosine_vs_torch_fp32']:.5f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
