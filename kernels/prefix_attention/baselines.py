"""Baselines of ``prefix_attention`` for ``seqtune bench``: the same computation by other means.

- ``torch``: plain PyTorch: the scores q . k_t in the inputs' dtype, weights exp(score - the
  sequence's largest score) in float32, and every prefix's weighted mean as a ratio of two
  cumulative sums; o in v's dtype. Exact while a sequence's scores span less than float32's exp
  range (~87), as they do for unit-scale scores.

It takes the spec's inputs (``q [B, H, D]``, ``k, v [B, T, H, D]``, ``scale`` or None) and
returns ``(o [B, T, H, D],)`` like ``spec.run``.
"""
from __future__ import annotations

import torch

from seqtune.spec import Inputs, Outputs


def torch_prefix_attention(inputs: Inputs) -> Outputs:
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    scale = q.shape[-1] ** -0.5 if inputs["scale"] is None else float(inputs["scale"])
    scores = torch.einsum("bhd,bthd->bth", q, k).float() * scale
    weights = torch.exp(scores - scores.amax(dim=1, keepdim=True))
    sums = torch.cumsum(weights[..., None] * v.float(), dim=1)
    return ((sums / torch.cumsum(weights, dim=1)[..., None]).to(v.dtype),)


BASELINES = {"torch": torch_prefix_attention}
