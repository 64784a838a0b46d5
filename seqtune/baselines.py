"""Building blocks for the baselines a kernel spec offers ``seqtune bench``.

``autograd_of`` turns a forward baseline (plain PyTorch, say) into the backward baseline the
issue asks a backward spec to be compared with: PyTorch autograd of that implementation, timed
with the forward autograd needs.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from seqtune.spec import Inputs, Outputs


def autograd_of(forward: Callable[[Inputs], Outputs], wrt: Sequence[str],
                upstream: Sequence[str], accumulate_fp32: bool = False
                ) -> Callable[[Inputs], Outputs]:
    """A backward baseline: the gradients, by autograd through ``forward``, of the inputs named
    in ``wrt`` that are present (in that order), for the upstream gradients ``inputs[name]`` of
    ``forward``'s outputs in order (a missing or None name: that output gets none).

    ``accumulate_fp32``: ``forward`` sees fp32 copies of the differentiated inputs (gradients
    come back in the inputs' dtypes), where the CPU's half-precision autograd would sum long
    reductions in half precision while a GPU's libraries accumulate in fp32."""
    def gradients(inputs: Inputs) -> Outputs:
        names = [name for name in wrt if inputs.get(name) is not None]
        leaves = {name: inputs[name].detach().requires_grad_() for name in names}
        seen = {k: v.float() for k, v in leaves.items()} if accumulate_fp32 else leaves
        outputs = forward({**inputs, **seen})
        pairs = [(out, inputs[name]) for out, name in zip(outputs, upstream)
                 if inputs.get(name) is not None]
        grads = torch.autograd.grad([out for out, _ in pairs], [leaves[n] for n in names],
                                    [grad.to(out.dtype) for out, grad in pairs],
                                    allow_unused=True)
        # An input the outputs do not depend on here (a decay at length 1) has a zero gradient.
        return tuple(torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(names, grads))
    return gradients
