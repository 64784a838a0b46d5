"""``torch.ops.seqtune.attention_decode`` (see ``seqtune.custom_ops``): inference only, its
outputs ``(o, lse)`` are constants for autograd."""
from __future__ import annotations

import torch

from seqtune.custom_ops import decode_config

from seqtune.kernels.attention_decode.op import attention_decode_forward


@torch.library.custom_op("seqtune::attention_decode", mutates_args=())
def attention_decode_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        cache_seqlens: torch.Tensor, scale: float | None,
                        config: str | None, block_table: torch.Tensor | None = None,
                        cache_leftpad: torch.Tensor | None = None, window_left: int = -1,
                        softcap: float = 0.0, alibi_slopes: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_decode_forward(q, k_cache, v_cache, cache_seqlens, scale,
                                    decode_config(config), block_table, cache_leftpad,
                                    window_left, softcap, alibi_slopes)


@attention_decode_op.register_fake
def _(q, k_cache, v_cache, cache_seqlens, scale, config, block_table=None, cache_leftpad=None,
      window_left=-1, softcap=0.0, alibi_slopes=None):
    return q.new_empty(q.shape), q.new_empty(q.shape[:2], dtype=torch.float32)


def _mark_outputs(ctx, inputs, output) -> None:
    # custom_ops.non_differentiable marks a single output; this op has two.
    ctx.mark_non_differentiable(*output)


def _no_backward(ctx, *grads) -> None:
    raise AssertionError("unreachable: the outputs are marked non-differentiable")


torch.library.register_autograd(attention_decode_op, _no_backward, setup_context=_mark_outputs)
