"""Chunkwise delta rule (DeltaNet, Gated DeltaNet, Kimi Delta Attention) in Triton.

``op.delta_rule`` is the public op (three forward stages in ``kernels.py``, launched by
``stages.py``; packed sequences via ``varlen.py``); ``autograd.py`` and ``backward.py`` its
backward; ``step.delta_rule_step`` one decoding token on a state pool. ``spec.SPECS`` describes
``delta_rule``, ``delta_rule_bwd`` and ``delta_rule_step`` to the tuner; ``reference`` holds the
independent float64 recurrence they are checked against.
"""

# Registers torch.ops.seqtune.delta_rule, which op.py calls.
from seqtune.kernels.delta_rule import library  # noqa: E402,F401
