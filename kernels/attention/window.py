"""The sliding window as the tuning problem field ``window`` of ``attention`` and
``attention_bwd`` (torch-free arithmetic, shared by ``op.problem_of``, the problems' inputs and
``seqtune.integrations.model_config``, so a problem derived from a model config equals the one
its layers' calls look up).

Key tiles wholly outside a window are skipped, so a windowed call does O(T * window) work and
its best tiles differ from a dense call's. The field is the band a query's window reaches
besides its diagonal: the left extent, plus the right extent when the call is not causal (with
causal the right bound hides nothing). It is bucketed up to a power of two, as sizes are, so a
window of 4095 (transformers' ``sliding_window=4096`` is flash-attn's ``(4095, 4095)``) and one
of 4096 share the entries tuned for 4096; it matches exactly, like ``D``: a window in another
bucket runs the default config rather than a config tuned for a much wider or narrower band.

A window that hides no key (it reaches every key of every query: short sequences under a long
window) is no window, and so is ``-1`` (unbounded): such calls keep the dense problem, with no
``window`` field, and old profile entries (the spec's ``problem_defaults`` give them
``window: 0``) keep serving them. With packed sequences the totals T and S stand for the
longest sequence (what the problem knows of them).
"""
from __future__ import annotations

# The problem value of a call without a (hiding) window: ``problem_defaults`` give old entries it.
NO_WINDOW_FIELD = 0


def window_field(window: tuple[int, int], causal: bool, queries: int, keys: int) -> int:
    """The ``window`` field of a call with flash-attn's ``window=(left, right)`` (-1 unbounded)
    over ``queries`` x ``keys``: the band's reach rounded up to a power of two, or
    ``NO_WINDOW_FIELD`` when the window hides no key."""
    left, right = window
    # Query i sits at key i + keys - queries: it sees every key when its band reaches key 0 on
    # the left (the last query the farthest: keys - 1) and the last key on the right (the first
    # query the farthest: queries - 1).
    reach_left = keys - 1 if left < 0 else min(left, keys - 1)
    reach_right = 0 if causal else queries - 1 if right < 0 else min(right, queries - 1)
    hides = reach_left < keys - 1 or (not causal and reach_right < queries - 1)
    if not hides:
        return NO_WINDOW_FIELD
    reach = reach_left + reach_right
    return 1 if reach <= 1 else 1 << (reach - 1).bit_length()


def window_of_field(field: int, causal: bool) -> tuple[int, int]:
    """The ``(left, right)`` window a problem's inputs pass for its ``window`` field: the
    whole reach on the left when causal, else split evenly between the sides (a symmetric
    band, as local attention encoders use), so ``window_field`` gives the field back."""
    if field == NO_WINDOW_FIELD:
        return (-1, -1)
    if causal:
        return (field, 0)
    return (field - field // 2, field // 2)


def windowed(problem: dict) -> bool:
    """Whether a problem (old entries' defaults filled in or not) has a window that hides keys."""
    return problem.get("window", NO_WINDOW_FIELD) != NO_WINDOW_FIELD
