"""KV-cache decoding attention with split-KV (flash-decoding): one new query token per sequence
attends to its own prefix of a padded KV cache; the cache is cut into splits processed in
parallel, then merged with a log-sum-exp reduction."""

# Registers torch.ops.seqtune.attention_decode, which op.py calls.
from seqtune.kernels.attention_decode import library  # noqa: E402,F401
