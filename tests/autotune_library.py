"""A library's kernels under plain triton.autotune, as fla's are, for tests/test_autotune.py.
``accumulate`` adds x into y in place (restore_value), ``total`` sums x with atomics into a
zeroed buffer (reset_to_zero). In both, the TAIL=False config skips a partial last block: the
fastest config, and wrong whenever n is not a multiple of 64."""
import triton
import triton.language as tl

CONFIGS = [triton.Config({"BLOCK": 16, "TAIL": True}, num_warps=4, num_stages=1),
           triton.Config({"BLOCK": 32, "TAIL": True}, num_warps=4, num_stages=1),
           triton.Config({"BLOCK": 64, "TAIL": False}, num_warps=4, num_stages=1)]


@triton.autotune(configs=CONFIGS, key=["n"], restore_value=["y"])
@triton.jit
def accumulate_kernel(x, y, n, BLOCK: tl.constexpr, TAIL: tl.constexpr):
    start = tl.program_id(0) * BLOCK
    if TAIL or start + BLOCK <= n:
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(y + offs, tl.load(y + offs, mask=mask) + tl.load(x + offs, mask=mask),
                 mask=mask)


@triton.autotune(configs=CONFIGS, key=["n"], reset_to_zero=["total"])
@triton.jit
def total_kernel(x, total, n, BLOCK: tl.constexpr, TAIL: tl.constexpr):
    start = tl.program_id(0) * BLOCK
    if TAIL or start + BLOCK <= n:
        offs = start + tl.arange(0, BLOCK)
        tl.atomic_add(total, tl.sum(tl.load(x + offs, mask=offs < n, other=0.0), axis=0))


def accumulate(x, y):
    """y += x, in place."""
    accumulate_kernel[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, y, x.numel())
    return y


def total(x):
    out = x.new_zeros(1, dtype=x.dtype)
    total_kernel[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, out, x.numel())
    return out
