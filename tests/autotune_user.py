"""A user's kernel under seqtune.autotune, for tests/test_autotune.py: out = x * scale + y.
Its configs differ in BLOCK; the one with TAIL=False skips a partial last block, so it is the
fastest (fewest programs) and wrong whenever n is not a multiple of its BLOCK."""
import triton
import triton.language as tl

import seqtune

CONFIGS = [triton.Config({"BLOCK": 16, "TAIL": True}, num_warps=4, num_stages=1),
           triton.Config({"BLOCK": 32, "TAIL": True}, num_warps=4, num_stages=1),
           triton.Config({"BLOCK": 64, "TAIL": False}, num_warps=4, num_stages=1)]
WRONG = {"BLOCK": 64, "TAIL": False, "num_warps": 4, "num_stages": 1}


@seqtune.autotune(configs=CONFIGS, key=["n"])
@triton.jit
def axpy(x, y, out, n, scale, BLOCK: tl.constexpr, TAIL: tl.constexpr):
    start = tl.program_id(0) * BLOCK
    if TAIL or start + BLOCK <= n:
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n
        a = tl.load(x + offs, mask=mask)
        b = tl.load(y + offs, mask=mask)
        tl.store(out + offs, a * scale + b, mask=mask)


def run(x, y, scale=2.0):
    out = x.new_empty(x.shape)
    axpy[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, y, out, x.numel(), scale)
    return out


def expected_axpy(x, y, out, n, scale):
    """axpy's reference, called like the kernel: writes its result into ``out``."""
    out.copy_(x * scale + y)


# The same kernel with the wrong config as its default: only a reference tells it is wrong.
axpy_checked = seqtune.autotune(configs=CONFIGS, key=["n"], default=2, reference=expected_axpy,
                                name="axpy_checked")(axpy.fn)


def small_blocks(configs, named_args, **kwargs):
    """prune_configs_by's early_config_prune: blocks of at most 16 below 64 elements."""
    return [c for c in configs if named_args["n"] >= 64 or c.kwargs["BLOCK"] <= 16]


axpy_pruned = seqtune.autotune(configs=CONFIGS, key=["n"], name="axpy_pruned",
                               prune_configs_by={"early_config_prune": small_blocks})(axpy.fn)
