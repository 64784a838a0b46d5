"""The delta rule's kernels as the tuner sees them: the chunkwise forward, its backward and the
decoding step (each spec in its own module)."""
from __future__ import annotations

from seqtune.kernels.delta_rule.bwd_spec import BWD_SPEC
from seqtune.kernels.delta_rule.forward_spec import FORWARD_SPEC
from seqtune.kernels.delta_rule.step_spec import STEP_SPEC

SPECS = (FORWARD_SPEC, BWD_SPEC, STEP_SPEC)
