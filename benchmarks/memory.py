"""Bytes SWGL holds per parameter, for every storage format.

* BERT-base (109.5M params in 202 tensors, fp32): real tensors on the CPU, random grads, one
  ``SWGL(..., storage=name).step()``, then every byte of every tensor in ``opt.state``
  (the format's tensors and the per-tensor step counter) is counted.
* Llama-2-7B (6.74B params in 291 tensors): computed from the shapes on the meta device
  (``storage.init`` allocates nothing there), checked against the BERT count: a step never
  changes the state's size (tests/test_storage.py::test_a_step_keeps_the_state_size).

Usage: ``python benchmarks/memory.py [--formats fp32,bf16,...]``; prints a table and writes
``benchmarks/memory.json`` as ``{"<storage>": {"bytes_per_param": float, ...}}``, where
``bytes_per_param`` is the BERT-base figure.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bert_shapes import bert_base_shapes  # noqa: E402

from swgl import SWGL  # noqa: E402
from swgl.state import STORAGES  # noqa: E402

#: Targets from issue 6, bytes per param.
TARGETS = {"fp32": 4.0, "bf16": 2.0, "blockwise8": 1.05, "factored": 0.02}


def llama2_7b_shapes() -> list[tuple[int, ...]]:
    """LlamaForCausalLM with Llama-2-7B's config (untied embeddings)."""
    h, ff, vocab, layers = 4096, 11008, 32000, 32
    shapes: list[tuple[int, ...]] = [(vocab, h)]
    for _ in range(layers):
        shapes += [(h, h)] * 4 + [(ff, h), (ff, h), (h, ff), (h,), (h,)]
    return shapes + [(h,), (vocab, h)]


def state_bytes(states) -> int:
    return sum(t.numel() * t.element_size() for st in states for t in st.values()
               if isinstance(t, torch.Tensor))


def computed_bytes(name: str, shapes: list[tuple[int, ...]]) -> int:
    """The state ``name`` allocates for these shapes, plus the 4-byte step counters."""
    storage = STORAGES[name]
    states = [{**storage.init(torch.empty(s, device="meta"), 0.0), "step": torch.zeros(())}
              for s in shapes]
    return state_bytes(states)


def measured_bytes(name: str, params: list[torch.Tensor]) -> int:
    opt = SWGL(params, storage=name)
    opt.step()
    return state_bytes(opt.state.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--formats", default=",".join(STORAGES))
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    names = args.formats.split(",")

    shapes, source = bert_base_shapes()
    gen = torch.Generator().manual_seed(0)
    params = []
    for s in shapes:
        p = torch.randn(s, generator=gen) * 0.02
        p.grad = torch.randn(s, generator=gen) * 1e-3
        params.append(p)
    n_bert = sum(p.numel() for p in params)
    llama = llama2_7b_shapes()
    n_llama = sum(math.prod(s) for s in llama)

    results = {}
    for name in names:
        measured = measured_bytes(name, params)
        computed = computed_bytes(name, shapes)
        if measured != computed:
            raise RuntimeError(f"{name}: measured {measured} B != computed {computed} B")
        llama_bytes = computed_bytes(name, llama)
        results[name] = {
            "bytes_per_param": measured / n_bert,
            "bert_base_bytes": measured,
            "bert_base_params": n_bert,
            "bert_base_tensors": len(shapes),
            "bert_base_shapes": source,
            "llama2_7b_bytes_per_param": llama_bytes / n_llama,
            "llama2_7b_gib": llama_bytes / 2**30,
            "llama2_7b_params": n_llama,
            "target_bytes_per_param": TARGETS.get(name),
        }

    print(f"{'storage':15s} {'B/param BERT':>13s} {'MiB BERT':>9s} {'B/param 7B':>11s} "
          f"{'GiB 7B':>8s} {'target':>7s}")
    for name, r in results.items():
        target = "" if r["target_bytes_per_param"] is None else f"{r['target_bytes_per_param']:g}"
        print(f"{name:15s} {r['bytes_per_param']:13.4f} {r['bert_base_bytes'] / 2**20:9.2f} "
              f"{r['llama2_7b_bytes_per_param']:11.4f} {r['llama2_7b_gib']:8.3f} {target:>7s}")
    print(f"BERT-base: {n_bert / 1e6:.1f}M params in {len(shapes)} tensors ({source}); "
          f"Llama-2-7B: {n_llama / 1e9:.2f}B params in {len(llama)} tensors")
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
