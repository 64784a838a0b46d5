"""The problems of the causal_conv1d specs (forward and backward share them): fields, inputs,
presets and the odd-shaped verify cases.

Problem fields: size fields ``B`` (rows of x; 1 when packed), ``T`` (tokens per row: the packed
total when varlen), ``D`` (channels) and ``N`` (sequences: B, or the number packed), bucketed to
powers of two, so a packed batch of any length mix reuses one entry; categorical ``W`` (width),
``varlen``, ``has_bias``, ``silu``, ``has_initial_state`` and ``dtype`` (of x; weight, bias and
the initial state are made in it too, as models keep them).
"""
from __future__ import annotations

import torch

from seqtune.spec import DTYPES, Inputs, Problem

PROBLEM_DEFAULTS = {"varlen": False, "has_bias": True, "silu": True, "has_initial_state": False}


def packed_lengths(total: int, count: int, generator: torch.Generator) -> list[int]:
    """``count`` lengths summing to ``total`` at random cuts; with three or more sequences
    (and a token to spare) the second is empty and the last has length 1."""
    special = [0, 1] if count >= 3 and total >= 1 else []
    free_count, free_total = count - len(special), total - sum(special)
    cuts = sorted(torch.randint(0, free_total + 1, (free_count - 1,), generator=generator).tolist())
    free = [b - a for a, b in zip([0, *cuts], [*cuts, free_total])]
    if not special:
        return free
    return [free[0], 0, *free[1:], 1]


def make_forward_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """Unit-normal x; weight ~ U(-1/sqrt(W), 1/sqrt(W)) and bias like PyTorch's Conv1d init;
    unit-normal initial states; packed lengths from ``packed_lengths``."""
    problem = {**PROBLEM_DEFAULTS, **problem}
    generator = torch.Generator().manual_seed(seed)
    B, T, D, W, N = (problem[k] for k in ("B", "T", "D", "W", "N"))
    dtype = DTYPES[problem["dtype"]]
    bound = W ** -0.5

    def uniform(*shape):
        return (2 * torch.rand(*shape, generator=generator) - 1) * bound

    inputs: Inputs = {
        "x": torch.randn(B, T, D, generator=generator).to(device, dtype),
        "weight": uniform(D, W).to(device, dtype),
        "bias": uniform(D).to(device, dtype) if problem["has_bias"] else None,
        "initial_state": (torch.randn(N, D, W - 1, generator=generator).to(device, dtype)
                          if problem["has_initial_state"] else None),
        "cu_seqlens": None,
        "activation": "silu" if problem["silu"] else None,
    }
    if problem["varlen"]:
        lengths = packed_lengths(T, N, generator)
        inputs["cu_seqlens"] = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()],
                                            dtype=torch.int32, device=device)
    return inputs


def case(B, T, D, W, dtype, *, N=None, varlen=False, has_bias=True, silu=True,
         has_initial_state=False) -> Problem:
    return {"B": B, "T": T, "D": D, "W": W, "N": B if N is None else N, "varlen": varlen,
            "has_bias": has_bias, "silu": silu, "has_initial_state": has_initial_state,
            "dtype": dtype}


# Widths 2-4 and LFM3's 7; T never a multiple of a tile; packed batches with empty and length-1
# sequences (packed_lengths); a row shorter than W - 1, whose final state reaches into the
# initial one.
VERIFY_CASES = [
    case(2, 37, 24, 4, "float32", has_initial_state=True),
    case(1, 1, 5, 2, "float32", has_bias=False, silu=False),
    case(3, 45, 40, 3, "bfloat16", has_bias=False),
    case(1, 53, 20, 4, "bfloat16", N=5, varlen=True, has_initial_state=True),
    case(1, 29, 12, 2, "float32", N=4, varlen=True, has_bias=False, has_initial_state=True),
    case(2, 2, 6, 4, "float32", silu=False, has_initial_state=True),
    case(1, 31, 13, 7, "bfloat16", N=4, varlen=True, has_bias=False, has_initial_state=True),
]


def _dense(shapes, dtypes, **flags) -> list[Problem]:
    return [case(B, T, D, W, dtype, **flags) for B, T, D, W in shapes for dtype in dtypes]


def _packed(shapes, dtypes, **flags) -> list[Problem]:
    return [case(1, T, D, W, dtype, N=N, varlen=True, **flags)
            for T, N, D, W in shapes for dtype in dtypes]


# Channel counts of real layers: Mamba-2 2.7B's conv runs over 5376 channels (bias, SiLU);
# Qwen3-Next's Gated DeltaNet over 8192 and KDA's q/k/v convs over 4096 each (no bias, SiLU);
# LFM3's width-7 gated convolution over its 2048 hidden channels (no bias, no activation).
PRESETS = {
    "tiny": [case(1, 33, 16, 4, "float32"),
             case(1, 40, 16, 4, "bfloat16", N=4, varlen=True, has_initial_state=True)],
    "quick": (_dense([(4, 2048, 4096, 4)], ("bfloat16",), has_bias=False)
              + _packed([(8192, 8, 4096, 4)], ("bfloat16",), has_bias=False)),
    "default": (_dense([(8, 2048, 5376, 4), (2, 4096, 8192, 4)], ("bfloat16", "float32"))
                + _dense([(4, 4096, 4096, 4), (1, 16384, 8192, 4)], ("bfloat16",),
                         has_bias=False)
                + _packed([(16384, 16, 4096, 4), (32768, 64, 8192, 4)], ("bfloat16",),
                          has_bias=False)
                + _dense([(4, 4096, 2048, 7)], ("bfloat16",), has_bias=False, silu=False)),
    "full": (_dense([(B, T, D, 4) for B in (1, 8) for T in (2048, 8192)
                     for D in (2048, 4096, 5376, 8192)], ("bfloat16", "float32"))
             + _dense([(B, T, D, 4) for B in (1, 8) for T in (2048, 8192)
                       for D in (4096, 8192)], ("bfloat16",), has_bias=False)
             + _packed([(T, N, D, 4) for T in (8192, 32768) for N in (4, 64)
                        for D in (4096, 8192)], ("bfloat16",), has_bias=False)
             + _dense([(4, 4096, 4096, W) for W in (2, 3)], ("bfloat16",))
             # the widest: its state kernels pad the 7 state columns to 8
             + _packed([(8192, 16, 4096, 8)], ("bfloat16",), has_bias=False,
                       has_initial_state=True)),
}


def element_bytes(problem: Problem) -> int:
    return DTYPES[problem["dtype"]].itemsize


def tokens(problem: Problem) -> int:
    return problem["B"] * problem["T"]
