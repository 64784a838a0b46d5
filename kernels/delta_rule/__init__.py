"""Chunkwise delta rule (DeltaNet, Gated DeltaNet, Kimi Delta Attention) in three Triton stages.

``op.delta_rule`` is the public op; ``spec.SPECS`` describes it to the tuner; ``reference``
holds the independent float64 recurrence it is checked against.
"""
