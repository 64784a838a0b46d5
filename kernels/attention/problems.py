"""The problems of ``attention`` and ``attention_bwd`` (the two specs share them): fields,
inputs, work counts, presets and the odd verify cases.

Problem fields: ``B, T, S, Hq, Hkv, N`` are sizes (bucketed to powers of two); ``D``, ``causal``,
``dtype``, ``score``, ``varlen`` are categorical, and so is ``Dv``, which is present only when
the value head dim differs from D, and ``window``, the sliding window's band bucketed to a
power of two (``window.py``), present only when the window hides a key. Packed problems
(``varlen: True``) have ``B = 1``, the packed totals as ``T`` and ``S`` and ``N`` sequences with a
fixed length mix (``varlen.sequence_lengths``; keys by ``varlen.key_lengths`` when ``S != T``),
so the bucket never depends on the mix.

Old profiles stay valid: ``problem_defaults`` give their entries ``N: 1, varlen: False`` (the
dense problems they were tuned on) and ``window: 0`` (no window), and a dense problem with
``Dv == D`` has no ``Dv`` field, just like them; a ``Dv`` problem never matches an entry without
``Dv``, nor a windowed problem an entry without its window bucket.
"""
from __future__ import annotations

import torch

from seqtune.kernels.attention.op import MAX_HEAD_DIM
from seqtune.kernels.attention.varlen import key_lengths, offsets_of, sequence_lengths
from seqtune.kernels.attention.window import NO_WINDOW_FIELD, window_of_field, windowed
from seqtune.spec import DTYPES, Inputs, Problem, next_power_of_2

# tl.dot's smallest tile edge on NVIDIA GPUs; tiles this small are always allowed.
MIN_TILE = 16
# Static shared memory of sm_90 builds besides the tiles (cuobjdump reports 1 KB).
RESERVED_SHARED_BYTES = 1024


def check_shape(problem: Problem) -> str | None:
    """Why the op cannot run the problem's head dims at all, or None."""
    for field, dim in (("D", problem["D"]), ("Dv", value_dim(problem))):
        if not 1 <= dim <= MAX_HEAD_DIM:
            return f"head dim {field}={dim} is not in 1..{MAX_HEAD_DIM}"
    return None


def tile_fits(tile: str, value: int, length_field: str, problem: Problem) -> str | None:
    """A row tile no larger than its length padded to a power of two (at least MIN_TILE)."""
    padded = max(MIN_TILE, next_power_of_2(problem[length_field]))
    if value > padded:
        return f"{tile}={value} exceeds {length_field}={problem[length_field]} padded to {padded}"
    return None


PROBLEM_DEFAULTS = {"score": "softmax", "N": 1, "varlen": False, "window": NO_WINDOW_FIELD}
SIZE_FIELDS = ("B", "T", "S", "Hq", "Hkv", "N")


def problem(B: int, T: int, S: int, Hq: int, Hkv: int, D: int, causal: bool, dtype: str,
            score: str = "softmax", *, Dv: int | None = None, N: int = 1, varlen: bool = False,
            window: int = NO_WINDOW_FIELD, **extra: float) -> Problem:
    """A problem with the fields ``op.problem_of`` gives its call: ``Dv`` only when it differs
    from D, ``window`` (a power of two, see ``window.py``) only when there is one."""
    fields: Problem = {"B": B, "T": T, "S": S, "Hq": Hq, "Hkv": Hkv, "D": D}
    if Dv is not None and Dv != D:
        fields["Dv"] = Dv
    fields.update({"causal": causal, "dtype": dtype, "score": score, "N": N, "varlen": varlen})
    if window != NO_WINDOW_FIELD:
        fields["window"] = window
    return {**fields, **extra}


def value_dim(problem: Problem) -> int:
    return problem.get("Dv", problem["D"])


def window_pair(problem: Problem) -> tuple[int, int]:
    """The ``(left, right)`` window the problem's inputs pass (``(-1, -1)``: none)."""
    return window_of_field(problem.get("window", NO_WINDOW_FIELD), problem["causal"])


def sequence_pairs(problem: Problem) -> list[tuple[int, int]]:
    """``(T_n, S_n)`` of every sequence (every batch row when dense)."""
    if not problem.get("varlen", False):
        return [(problem["T"], problem["S"])] * problem["B"]
    count = problem.get("N", 1)
    queries = sequence_lengths(problem["T"], count)
    keys = queries if problem["S"] == problem["T"] else key_lengths(problem["S"], count)
    return list(zip(queries, keys))


def make_inputs(problem: Problem, device: str, seed: int) -> Inputs:
    """Standard-normal q, k, v in the problem's dtype (and the score's, packing's and window's
    arguments: ``cu_seqlens``, and ``cu_seqlens_k`` when the key packing differs; ``window``)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[problem["dtype"]]

    def normal(length: int, heads: int, dim: int) -> torch.Tensor:
        shape = (problem["B"], length, heads, dim)
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    inputs = {"q": normal(problem["T"], problem["Hq"], problem["D"]),
              "k": normal(problem["S"], problem["Hkv"], problem["D"]),
              "v": normal(problem["S"], problem["Hkv"], value_dim(problem)),
              "causal": problem["causal"], "score": problem.get("score", "softmax")}
    if "sigmoid_bias" in problem:
        inputs["sigmoid_bias"] = problem["sigmoid_bias"]
    if windowed(problem):
        inputs["window"] = window_pair(problem)
    if problem.get("varlen", False):
        pairs = sequence_pairs(problem)
        inputs["cu_seqlens"] = offsets_of([t for t, _ in pairs], device)
        if problem["S"] != problem["T"]:
            inputs["cu_seqlens_k"] = offsets_of([s for _, s in pairs], device)
    return inputs


def visible_pairs(problem: Problem) -> int:
    """(query, key) pairs that take part (inside the causal bound and the window), per batch
    and head, summed over sequences when packed."""
    window = window_pair(problem)
    if problem.get("varlen", False):
        return sum(_visible(t, s, problem["causal"], window) for t, s in sequence_pairs(problem))
    return _visible(problem["T"], problem["S"], problem["causal"], window)


def _visible(queries: int, keys: int, causal: bool, window: tuple[int, int] = (-1, -1)) -> int:
    """Query i sits at key ``d = i + keys - queries`` and sees keys ``d - left .. d + right``
    (``right`` 0 when causal): the pairs up to the upper bound less those below the lower."""
    unbounded = queries + keys  # reaches past every key
    left, right = (unbounded if side < 0 else side for side in window)
    return (_keys_up_to(queries, keys, 0 if causal else right)
            - _keys_up_to(queries, keys, -left - 1))


def _keys_up_to(queries: int, keys: int, offset: int) -> int:
    """Pairs ``(i, j)`` with ``j <= i + keys - queries + offset``: the sum over the queries of
    the arithmetic run ``first, first + 1, ...`` clamped to ``[0, keys]``."""
    first, last = keys - queries + offset + 1, keys + offset  # the run over i = 0 .. queries-1
    low, high = max(first, 1), min(last, keys - 1)
    middle = (low + high) * (high - low + 1) // 2 if high >= low else 0
    full_rows = max(0, last - max(first, keys) + 1)
    return middle + full_rows * keys


def forward_flops(problem: Problem) -> float:
    """Multiply-adds per visible pair: q.k over D, then the weight times v over Dv."""
    return (2.0 * problem["B"] * problem["Hq"] * (problem["D"] + value_dim(problem))
            * visible_pairs(problem))


def tensor_bytes(problem: Problem) -> tuple[int, int]:
    """Bytes of (q and o, k and v) in the problem's dtype."""
    element = DTYPES[problem["dtype"]].itemsize
    query_side = problem["B"] * problem["T"] * problem["Hq"] * (problem["D"]
                                                               + value_dim(problem))
    key_side = problem["B"] * problem["S"] * problem["Hkv"] * (problem["D"] + value_dim(problem))
    return query_side * element, key_side * element


PRESETS = {
    # Interpreter-sized: each tile shape ~0.2 s in the interpreter (num_warps/num_stages are
    # held at their defaults there). T >= 64 keeps the default's tiles valid. The last three:
    # four packed sequences (one empty, one of length 1), padded head dims with Dv != D, and a
    # sliding window of 16 keys (its queries skip most key tiles).
    "tiny": (
        problem(1, 64, 64, 2, 1, 32, True, "bfloat16"),
        problem(1, 64, 32, 2, 2, 32, False, "float32"),
        problem(1, 64, 64, 2, 1, 32, True, "bfloat16", "sigmoid"),
        problem(1, 64, 32, 2, 1, 32, False, "float32", "sigmoid"),
        problem(1, 64, 64, 2, 1, 32, True, "bfloat16", N=4, varlen=True),
        problem(1, 64, 64, 2, 1, 48, True, "float32", Dv=24),
        problem(1, 64, 64, 2, 1, 32, True, "bfloat16", window=16),
    ),
    "quick": (
        problem(2, 1024, 1024, 16, 4, 128, True, "bfloat16"),
        problem(2, 1024, 1024, 16, 4, 64, False, "bfloat16"),
        problem(2, 1024, 1024, 16, 4, 128, True, "bfloat16", "sigmoid"),
        problem(1, 4096, 4096, 16, 4, 128, True, "bfloat16", N=8, varlen=True),
    ),
    # Realistic LLM prefill: B*Hq from 32 to 256, T from 1k to 16k, GQA, bf16; packed training
    # batches; head dims 80/96 (Phi, older GPTs) and MLA's 192/128.
    "default": (
        problem(16, 1024, 1024, 16, 16, 64, False, "bfloat16"),
        problem(8, 2048, 2048, 32, 8, 128, True, "bfloat16"),
        problem(4, 4096, 4096, 32, 8, 128, True, "bfloat16"),
        problem(2, 8192, 8192, 32, 8, 64, True, "bfloat16"),
        problem(1, 16384, 16384, 32, 8, 128, True, "bfloat16"),
        problem(4, 4096, 4096, 32, 8, 128, True, "bfloat16", "sigmoid"),
        problem(8, 2048, 2048, 16, 16, 64, False, "bfloat16", "sigmoid"),
        problem(1, 16384, 16384, 32, 8, 128, True, "bfloat16", N=16, varlen=True),
        problem(4, 4096, 4096, 32, 32, 80, True, "bfloat16"),
        problem(4, 4096, 4096, 16, 16, 192, True, "bfloat16", Dv=128),
    ),
}
PRESETS["full"] = PRESETS["default"] + (
    # Sliding windows: Mistral's 4096 keys at 16k, Gemma 3 27B's 1024, Gemma 2 9B's 4096 at head
    # dim 256 (where the window's registers make default_for take 32 query rows).
    problem(1, 16384, 16384, 32, 8, 128, True, "bfloat16", window=4096),
    problem(2, 8192, 8192, 32, 16, 128, True, "bfloat16", window=1024),
    problem(2, 8192, 8192, 16, 8, 256, True, "bfloat16", window=4096),
    problem(4, 4096, 4096, 32, 8, 128, False, "bfloat16"),
    problem(4, 4096, 4096, 32, 8, 128, True, "float16"),
    problem(4, 2048, 2048, 16, 16, 256, True, "bfloat16"),
    problem(4, 2048, 2048, 32, 1, 128, True, "bfloat16"),  # multi-query
    problem(2, 2048, 2048, 16, 4, 128, True, "float32"),
    problem(4, 1024, 8192, 32, 8, 128, True, "bfloat16"),  # chunked prefill: T < S
    problem(1, 16384, 16384, 32, 8, 128, True, "bfloat16", "sigmoid"),
    problem(1, 32768, 32768, 32, 8, 128, True, "bfloat16", N=64, varlen=True),
    problem(4, 4096, 4096, 32, 8, 96, True, "bfloat16"),
    problem(2, 2048, 2048, 8, 8, 512, True, "bfloat16"),  # Gemma-4 class head dims
    problem(2, 2048, 2048, 16, 8, 320, False, "bfloat16"),
    problem(2, 2048, 2048, 8, 4, 512, True, "bfloat16", Dv=256),
)

# Odd shapes: T and S not multiples of any block, causal with T < S and T > S (first rows see no
# key), grouped- and multi-query heads, head dims padded (3, 80, 96, 192) with Dv != D, packed
# batches of five sequences (lengths 0, 1 and uneven ones; with S != T the key lengths differ
# from the query lengths in both directions), sliding windows (causal with T < S; a symmetric
# band, packed). ``sigmoid_bias`` is not a problem field (it does not change the work): a case
# may carry it to test an explicit bias.
VERIFY_CASES = (
    problem(1, 37, 53, 4, 2, 32, False, "float32"),
    problem(2, 37, 53, 4, 2, 64, True, "bfloat16"),
    problem(1, 53, 37, 3, 1, 16, True, "float32"),
    problem(1, 77, 77, 2, 1, 128, True, "bfloat16"),
    problem(1, 45, 19, 2, 2, 16, True, "float16"),
    problem(1, 37, 53, 4, 2, 32, True, "bfloat16", "sigmoid"),
    problem(1, 53, 37, 2, 1, 16, False, "float32", "sigmoid", sigmoid_bias=-1.5),
    problem(1, 45, 45, 4, 2, 32, True, "bfloat16", N=5, varlen=True),
    problem(1, 37, 53, 4, 2, 16, True, "float32", N=5, varlen=True),
    problem(1, 53, 37, 2, 1, 16, True, "bfloat16", "sigmoid", N=5, varlen=True),
    problem(1, 37, 53, 4, 2, 32, True, "float32", window=16),
    problem(1, 45, 45, 4, 2, 16, False, "bfloat16", N=5, varlen=True, window=8),
    problem(1, 37, 41, 3, 3, 3, True, "float32", Dv=5),
    problem(1, 37, 45, 2, 1, 80, False, "bfloat16", Dv=96),
    problem(1, 45, 37, 4, 2, 96, True, "float32", Dv=64, N=5, varlen=True),
    problem(1, 45, 45, 2, 1, 192, True, "bfloat16", Dv=128),
    problem(1, 37, 53, 4, 2, 320, True, "bfloat16"),
    problem(1, 45, 37, 2, 1, 512, False, "float16", Dv=320),
)
