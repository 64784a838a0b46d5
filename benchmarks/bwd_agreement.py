"""The tune's agreement check (``seqtune.agreement.check_case``: the spec's tolerance, the
kernel's own default config) on every tiny-preset problem of a backward spec, in bf16 and fp16:
what decides "none valid" in ``seqtune tune`` (issue 34). Usage:

    TRITON_INTERPRET=1 python benchmarks/bwd_agreement.py [linear_attention_bwd]
"""
import sys

from seqtune.agreement import check_case
from seqtune.registry import get_spec

spec = get_spec(sys.argv[1] if len(sys.argv) > 1 else "linear_attention_bwd")
for problem in spec.presets["tiny"]:
    for dtype in ("bfloat16", "float16"):
        p = {**problem, "dtype": dtype}
        a = check_case(spec, p, dict(spec.default_config))
        label = " ".join(f"{k}={v}" for k, v in p.items()
                         if k in ("T", "H", "gate", "initial_state", "dtype"))
        print(f"{label:60s} ok={a.ok} max_rel_err={a.max_rel_err:.3g} {a.detail[:90]}", flush=True)
