"""``torch.ops.seqtune.attention_decode`` (see ``seqtune.custom_ops``): inference only, its
output is a constant for autograd."""
from __future__ import annotations

import torch

from seqtune.custom_ops import decode_config, non_differentiable

from seqtune.kernels.attention_decode.op import attention_decode_forward


@torch.library.custom_op("seqtune::attention_decode", mutates_args=())
def attention_decode_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        cache_seqlens: torch.Tensor, scale: float | None,
                        config: str | None) -> torch.Tensor:
    return attention_decode_forward(q, k_cache, v_cache, cache_seqlens, scale,
                                    decode_config(config))


@attention_decode_op.register_fake
def _(q, k_cache, v_cache, cache_seqlens, scale, config):
    return q.new_empty(q.shape)


non_differentiable(attention_decode_op)
