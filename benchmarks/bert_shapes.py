"""BERT-base parameter shapes (BertForMaskedLM, tied decoder): 109.5M params in 202 tensors.

Read from ``transformers.BertConfig`` when transformers is installed (the model is built on
the meta device: no weights, no download), else from the hard-coded list below, which is
what that gives for the default config.
"""

from __future__ import annotations


def _hard_coded() -> list[tuple[int, ...]]:
    h, ff, vocab = 768, 3072, 30522
    shapes: list[tuple[int, ...]] = [(vocab, h), (512, h), (2, h), (h,), (h,)]
    for _ in range(12):
        shapes += [(h, h), (h,)] * 4  # query, key, value, attention output
        shapes += [(h,), (h,)]  # attention LayerNorm
        shapes += [(ff, h), (ff,), (h, ff), (h,)]  # feed-forward
        shapes += [(h,), (h,)]  # output LayerNorm
    shapes += [(h, h), (h,), (h,), (h,), (vocab,)]  # MLM head transform, LayerNorm, bias
    return shapes


def bert_base_shapes() -> tuple[list[tuple[int, ...]], str]:
    """The shapes and where they came from."""
    try:
        import torch
        from transformers import BertConfig, BertForMaskedLM
    except ImportError:
        return _hard_coded(), "hard-coded"
    with torch.device("meta"):
        model = BertForMaskedLM(BertConfig())
    return [tuple(p.shape) for p in model.parameters()], "transformers.BertConfig()"


if __name__ == "__main__":
    shapes, source = bert_base_shapes()
    total = sum(int.__mul__(*s) if len(s) == 2 else s[0] for s in shapes)
    print(f"{len(shapes)} tensors, {total / 1e6:.2f}M params ({source})")
