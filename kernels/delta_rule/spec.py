"""The delta rule's kernels as the tuner sees them (the forward and the decoding step; each spec
in its own module)."""
from seqtune.kernels.delta_rule.forward_spec import SPECS

__all__ = ["SPECS"]
