"""flash-linear-attention's (fla 0.6) entry points on seqtune's kernels: the chunk_* and
fused_recurrent_* functions of gated_delta_rule, kda, delta_rule, gla and simple_gla, with fla's
argument order, defaults, layouts (``[B, T, H, K]``; states ``[N, HV, K, V]``, or
``[N, HV, V, K]`` with ``state_v_first``), dtypes and return values ``(o, final_state)``.

Shared by every function here:

- GVA: v, beta and the gates may have HV heads, a multiple of the H heads of q and k (value head
  i reads key head i // (HV / H)); also where fla itself wants HV == H.
- ``cu_seqlens`` (int32/int64 ``[N + 1]``, batch 1) packs N sequences; states are per sequence.
  ``cu_seqlens_cpu`` and ``chunk_indices`` are fla's precomputed copies of it: accepted, unused.
- ``chunk_size`` (a keyword in fla's ``**kwargs``) is a request only: the tuned config of the
  seqtune kernel decides the chunk; except for chunk_kda's ``return_intermediate_states``,
  whose per-chunk states are at fla's chunk boundaries.
- What is done in PyTorch before the kernel, in float32 (differentiable): the L2 norm of q and k
  (``use_qk_l2norm_in_kernel``: ``x / sqrt(sum(x^2) + 1e-6)``, as fla), the gate activations
  (``use_gate_in_kernel``), ``sigmoid(beta)`` (``use_beta_sigmoid_in_kernel``), and summing the
  gates fla applies one after the other (``g`` with ``gk``, ``g`` with ``g_gamma``).
- The fused_recurrent_* functions run the chunkwise kernel (seqtune has no token-serial kernel
  for a whole sequence): the same recurrence. A call whose sequences are single tokens
  (decoding: ``T == 1``, or ``cu_seqlens = [0, 1, ..., N]``) runs the one-token kernel
  (``delta_rule_step``, ``linear_attention_step``) instead, unless an input requires grad.
- An argument seqtune does not implement raises a one-line NotImplementedError naming it; so does
  any keyword fla's ``**kwargs`` would swallow that is not listed above.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from seqtune.checks import expect_shape
from seqtune.kernels import (delta_rule, delta_rule_step, linear_attention,
                             linear_attention_step)
from seqtune.kernels.delta_rule.op import delta_rule_chunk_states

L2NORM_EPS = 1e-6


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return repr(value)


def _refuse(function: str, argument: str, value: Any, supported: str) -> None:
    raise NotImplementedError(f"{function}: {argument}={_describe(value)} is not supported by "
                              f"seqtune ({supported})")


# the chunk sizes fla accepts per op (a ValueError for any other, as fla)
DELTA_RULE_CHUNKS = (16, 32, 64)
KDA_CHUNKS = (32, 64)
POWER_OF_TWO = "power of 2"


def _options(function: str, kwargs: dict[str, Any], state_v_first: bool,
             accepted: tuple[str, ...] = (), chunk_sizes: tuple[int, ...] | str | None = None
             ) -> tuple[bool, dict[str, Any]]:
    """fla's ``**kwargs``: (state_v_first after the deprecated ``transpose_state_layout``,
    the ``accepted`` keywords given). ``chunk_size`` is checked as fla checks it
    (``chunk_sizes``: the values fla allows, ``POWER_OF_TWO``, or None: any positive int) and
    dropped (a request)."""
    kwargs = dict(kwargs)
    if "transpose_state_layout" in kwargs:
        if state_v_first:
            raise ValueError(f"{function}: pass state_v_first or the deprecated "
                             f"transpose_state_layout, not both")
        # as fla: stacklevel 3 points at the caller of the entry point
        warnings.warn("`transpose_state_layout` is deprecated and renamed to `state_v_first`.",
                      DeprecationWarning, stacklevel=3)
        state_v_first = bool(kwargs.pop("transpose_state_layout"))
    _check_chunk_size(function, kwargs.pop("chunk_size", None), chunk_sizes)
    if "head_first" in kwargs:
        _refuse(function, "head_first", kwargs["head_first"],
                "removed in fla too: inputs are [B, T, H, ...]")
    given = {name: kwargs.pop(name) for name in accepted if name in kwargs}
    if kwargs:
        name = sorted(kwargs)[0]
        _refuse(function, name, kwargs[name], "not an argument seqtune implements")
    return state_v_first, given


def _check_chunk_size(function: str, chunk_size: Any,
                      allowed: tuple[int, ...] | str | None) -> None:
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{function}: chunk_size must be a positive int, got {chunk_size!r}")
    if allowed == POWER_OF_TWO and chunk_size & (chunk_size - 1):
        raise ValueError(f"{function}: chunk_size must be a power of 2, got {chunk_size}")
    if isinstance(allowed, tuple) and chunk_size not in allowed:
        listed = ", ".join(map(str, allowed))
        raise ValueError(f"{function}: chunk_size must be one of {listed}, got {chunk_size}")


# fla's layout of each gate-like argument, in the sizes of q [B, T, H, K] and v [B, T, HV, V]
STEP, CHANNEL, HEAD, HEAD_CHANNEL = ("B", "T", "HV"), ("B", "T", "HV", "K"), ("HV",), ("HV*K",)


def _check_gates(function: str, q: Any, v: Any, **named: tuple[Any, tuple[str, ...]]) -> None:
    """A one-line error naming the first gate, beta or gate parameter (``name=(tensor,
    layout)``, None skipped) that is not a tensor of fla's shape for these q and v (e.g. beta
    passed positionally where fla has ``gk``). q and v themselves are the op's to check."""
    if not all(isinstance(x, torch.Tensor) and x.dim() == 4 for x in (q, v)):
        return
    sizes = {"B": q.shape[0], "T": q.shape[1], "HV": v.shape[2], "K": q.shape[3]}
    for name, (tensor, layout) in named.items():
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{function}: {name} must be a torch.Tensor or None, got "
                            f"{type(tensor).__name__}")
        if name == "beta" and tensor.dim() == 4:
            _refuse(function, "beta", tensor, "one beta per step and head, [B, T, HV]")
        expected = tuple(_axis_size(sizes, axis) for axis in layout)
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{function}: {name} must have shape [{', '.join(layout)}] = "
                             f"{expected}, got {tuple(tensor.shape)}")


def _axis_size(sizes: dict[str, int], axis: str) -> int:
    """The size of a layout axis such as ``"HV*K"`` (a loop: dynamo cannot trace ``math.prod``
    of a generator)."""
    size = 1
    for name in axis.split("*"):
        size *= sizes[name]
    return size


def _refuse_context_parallel(function: str, cp_context: Any) -> None:
    if cp_context is not None:
        _refuse(function, "cp_context", cp_context, "no context parallelism")


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    """fla's in-kernel L2 norm, in float32, returned in x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().sum(-1, keepdim=True) + L2NORM_EPS)).to(x.dtype)


def _beta(beta: torch.Tensor, sigmoid: bool, allow_neg_eigval: bool, function: str
          ) -> torch.Tensor:
    if allow_neg_eigval and not sigmoid:
        raise ValueError(f"{function}: allow_neg_eigval=True requires "
                         f"use_beta_sigmoid_in_kernel=True")
    if not sigmoid:
        return beta
    beta = torch.sigmoid(beta.float())
    return 2 * beta if allow_neg_eigval else beta


def _gdn_gate(g: torch.Tensor, A_log: torch.Tensor | None, dt_bias: torch.Tensor | None,
              function: str) -> torch.Tensor:
    """Gated DeltaNet's gate from raw g [B, T, HV]: -exp(A_log) * softplus(g + dt_bias)."""
    if A_log is None:
        raise ValueError(f"{function}: A_log must be given with use_gate_in_kernel=True")
    g = g.float() if dt_bias is None else g.float() + dt_bias.float()
    return -A_log.float().exp() * F.softplus(g)


def _kda_gate(g: torch.Tensor, A_log: torch.Tensor | None, dt_bias: torch.Tensor | None,
              lower_bound: float | None, function: str) -> torch.Tensor:
    """KDA's gate from raw g [B, T, HV, K]: -exp(A_log) * softplus(g + dt_bias), or with a
    lower bound lower_bound * sigmoid(exp(A_log) * (g + dt_bias)); A_log [HV], dt_bias
    [HV * K]."""
    heads = g.shape[-2]
    g = g.float() if dt_bias is None else g.float() + dt_bias.float().view(heads, -1)
    if lower_bound is not None:
        if A_log is not None:
            g = A_log.float().view(heads, 1).exp() * g
        return lower_bound * torch.sigmoid(g)
    if A_log is None:
        raise ValueError(f"{function}: A_log must be given with use_gate_in_kernel=True "
                         f"(or set lower_bound)")
    return -A_log.float().view(heads, 1).exp() * F.softplus(g)


def _state_in(state: torch.Tensor | None, state_v_first: bool) -> torch.Tensor | None:
    """fla's [N, HV, V, K] state (state_v_first) as seqtune's [N, HV, K, V]: a transposed view."""
    return state.transpose(-1, -2) if state_v_first and state is not None else state


def _state_out(state: torch.Tensor | None, state_v_first: bool) -> torch.Tensor | None:
    return _state_in(state, state_v_first)


def _one_token_each(q: torch.Tensor, cu_seqlens: torch.Tensor | None) -> bool:
    """Whether every sequence is a single token (a decoding step, packed or not)."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        return False
    if cu_seqlens is None:
        return q.shape[1] == 1
    tokens = q.shape[1]
    return (q.shape[0] == 1 and tokens > 0 and isinstance(cu_seqlens, torch.Tensor)
            and cu_seqlens.shape == (tokens + 1,)
            and bool((cu_seqlens.cpu() == torch.arange(tokens + 1)).all()))


def _one_dtype(q, k, v, gates):
    """fla's mixed input dtypes (e.g. q and k float32, v float16): (q, k, v in the widest of
    their dtypes, the gates, each in that dtype or float32), by differentiable casts (each
    gradient comes back in its input's dtype). Non-tensors are left for the op to name."""
    tensors = (q, k, v, *(x for x in gates if x is not None))
    if not all(isinstance(x, torch.Tensor) and x.is_floating_point() for x in tensors):
        return q, k, v, gates
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    gates = tuple(x if x is None or x.dtype in (dtype, torch.float32) else x.float()
                  for x in gates)
    return q.to(dtype), k.to(dtype), v.to(dtype), gates


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors)


def _decode(step, q, k, v, gates, scale, initial_state, output_final_state):
    """One token per sequence on a step kernel (``delta_rule_step``, ``linear_attention_step``),
    from a float32 copy of the initial state (fla's fused_recurrent leaves it untouched too)."""
    tokens = q.shape[0] * q.shape[1]
    shape = (tokens, v.shape[2], q.shape[3], v.shape[3])
    if initial_state is None:
        state = torch.zeros(shape, dtype=torch.float32, device=q.device)
    else:
        expect_shape("initial_state", initial_state, shape)
        state = initial_state.to(torch.float32, memory_format=torch.contiguous_format,
                                 copy=True)
    rows = [None if x is None else x.reshape(tokens, *x.shape[2:]) for x in (q, k, v, *gates)]
    o = step(*rows, state=state, scale=scale)
    return o.reshape(v.shape), state if output_final_state else None


def _run_delta_rule(q, k, v, beta, g, *, scale, initial_state, output_final_state,
                    use_qk_l2norm_in_kernel, state_v_first, cu_seqlens, recurrent=False,
                    states_chunk=None):
    """The delta rule on the chunkwise op; a fused_recurrent_* call (``recurrent``) whose
    sequences are single tokens and that needs no gradient runs ``delta_rule_step`` instead.
    o is in v's dtype. ``states_chunk``: also the states entering each chunk of that many
    tokens (``delta_rule_chunk_states``), a third result."""
    if use_qk_l2norm_in_kernel:
        q, k = _l2norm(q), _l2norm(k)
    out_dtype = v.dtype if isinstance(v, torch.Tensor) else None
    q, k, v, (beta, g) = _one_dtype(q, k, v, (beta, g))
    initial_state = _state_in(initial_state, state_v_first)
    if states_chunk is not None:
        o, final, h = delta_rule_chunk_states(q, k, v, beta, g, scale, initial_state,
                                              output_final_state, cu_seqlens, states_chunk)
        return o.to(out_dtype), _state_out(final, state_v_first), _state_out(h, state_v_first)
    if (recurrent and _one_token_each(q, cu_seqlens)
            and not _needs_grad(q, k, v, beta, g, initial_state)):
        o, final = _decode(delta_rule_step, q, k, v, (beta, g), scale, initial_state,
                           output_final_state)
    else:
        o, final = delta_rule(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                              output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return o.to(out_dtype), _state_out(final, state_v_first)


def _run_linear_attention(q, k, v, g, *, scale, initial_state, output_final_state,
                          state_v_first, cu_seqlens, reverse=False, recurrent=False):
    """Linear attention, optionally in reverse time (fla's ``reverse``: each sequence runs from
    its last step to its first), by flipping the steps and the order of the sequences; a
    fused_recurrent_* call whose sequences are single tokens and that needs no gradient runs
    ``linear_attention_step`` (reverse changes nothing for one token). o is in v's dtype."""
    out_dtype = v.dtype if isinstance(v, torch.Tensor) else None
    q, k, v, (g,) = _one_dtype(q, k, v, (g,))
    initial_state = _state_in(initial_state, state_v_first)
    if (recurrent and _one_token_each(q, cu_seqlens)
            and not _needs_grad(q, k, v, g, initial_state)):
        o, final = _decode(linear_attention_step, q, k, v, (g,), scale, initial_state,
                           output_final_state)
        return o.to(out_dtype), _state_out(final, state_v_first)
    if reverse:
        q, k, v = (x.flip(1) for x in (q, k, v))
        g = None if g is None else g.flip(1)
        if cu_seqlens is not None:
            cu_seqlens = cu_seqlens[-1] - cu_seqlens.flip(0)
            initial_state = None if initial_state is None else initial_state.flip(0)
    o, final = linear_attention(q, k, v, g, scale=scale, initial_state=initial_state,
                                output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    if reverse:
        o = o.flip(1)
        final = final.flip(0) if final is not None and cu_seqlens is not None else final
    return o.to(out_dtype), _state_out(final, state_v_first)


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None,
                           output_final_state=False, use_qk_l2norm_in_kernel=False,
                           use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                           state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None,
                           chunk_indices=None, cp_context=None, **kwargs):
    """fla's ``chunk_gated_delta_rule`` (Gated DeltaNet) on ``seqtune.kernels.delta_rule``.

    q, k ``[B, T, H, K]``; v ``[B, T, HV, V]``; g (log decay) and beta ``[B, T, HV]``;
    16 <= K, V <= 256. kwargs: ``use_gate_in_kernel`` with ``A_log`` ``[HV]`` and ``dt_bias``
    ``[HV]`` (g is then raw: ``-exp(A_log) * softplus(g + dt_bias)``), ``chunk_size``.
    Returns ``(o [B, T, HV, V], final_state [N, HV, K, V] float32 or None)``, differentiable
    where the seqtune op is. Not supported: ``cp_context``; ``return_intermediate_states``,
    which fla 0.6.0's chunk_gated_delta_rule does not have (its ``**kwargs`` drop it silently;
    chunk_kda has it), is refused as any unknown keyword.
    """
    function = "chunk_gated_delta_rule"
    _refuse_context_parallel(function, cp_context)
    state_v_first, extra = _options(function, kwargs, state_v_first,
                                    ("use_gate_in_kernel", "A_log", "dt_bias"),
                                    DELTA_RULE_CHUNKS)
    _check_gates(function, q, v, g=(g, STEP), beta=(beta, STEP),
                 A_log=(extra.get("A_log"), HEAD), dt_bias=(extra.get("dt_bias"), HEAD))
    if extra.get("use_gate_in_kernel", False):
        g = _gdn_gate(g, extra.get("A_log"), extra.get("dt_bias"), function)
    beta = _beta(beta, use_beta_sigmoid_in_kernel, allow_neg_eigval, function)
    return _run_delta_rule(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state,
                           use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                           state_v_first=state_v_first, cu_seqlens=cu_seqlens)


def fused_recurrent_gated_delta_rule(q, k, v, g=None, gk=None, gv=None, beta=None, scale=None,
                                     initial_state=None, output_final_state=False,
                                     use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                                     A_log=None, dt_bias=None, use_beta_sigmoid_in_kernel=False,
                                     allow_neg_eigval=False, state_v_first=False,
                                     cu_seqlens=None, **kwargs):
    """fla's ``fused_recurrent_gated_delta_rule`` on ``seqtune.kernels.delta_rule``.

    g ``[B, T, HV]`` (raw with ``use_gate_in_kernel``, as in ``chunk_gated_delta_rule``) and
    gk ``[B, T, HV, K]`` log decays, both optional and summed when both are given; beta
    ``[B, T, HV]`` (None: ones). Other arguments and the return value as
    ``chunk_gated_delta_rule``; single-token sequences run ``delta_rule_step``. Not supported:
    ``gv`` (value-channel decay), a per-channel beta ``[B, T, HV, V]``.
    """
    function = "fused_recurrent_gated_delta_rule"
    state_v_first, _ = _options(function, kwargs, state_v_first)
    _check_gates(function, q, v, g=(g, STEP), gk=(gk, CHANNEL), beta=(beta, STEP),
                 A_log=(A_log, HEAD), dt_bias=(dt_bias, HEAD))
    if gv is not None:
        _refuse(function, "gv", gv, "decay over key channels (gk) or heads (g) only")
    if use_gate_in_kernel:
        if g is None:
            raise ValueError(f"{function}: g (raw) must be given with use_gate_in_kernel=True")
        g = _gdn_gate(g, A_log, dt_bias, function)
    if gk is not None:
        g = gk if g is None else gk.float() + g.float().unsqueeze(-1)
    if beta is None:
        beta = v.new_ones(v.shape[:3])
    beta = _beta(beta, use_beta_sigmoid_in_kernel, allow_neg_eigval, function)
    return _run_delta_rule(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state,
                           use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                           state_v_first=state_v_first, cu_seqlens=cu_seqlens, recurrent=True)


def chunk_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
              use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
              use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False, safe_gate=False,
              lower_bound=None, disable_recompute=False, return_intermediate_states=False,
              state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None, cp_context=None,
              **kwargs):
    """fla's ``chunk_kda`` (Kimi Delta Attention) on ``seqtune.kernels.delta_rule`` with a
    per-channel gate.

    q, k ``[B, T, H, K]``; v ``[B, T, HV, V]``; g ``[B, T, HV, K]``; beta ``[B, T, HV]``.
    ``use_gate_in_kernel`` with kwargs ``A_log`` ``[HV]`` and ``dt_bias`` ``[HV * K]``:
    g is raw, ``-exp(A_log) * softplus(g + dt_bias)``, or with ``lower_bound``
    ``lower_bound * sigmoid(exp(A_log) * (g + dt_bias))``. ``safe_gate`` and
    ``disable_recompute`` choose fla kernels and change no result: accepted. Returns
    ``(o, final_state)`` as ``chunk_gated_delta_rule``; with ``return_intermediate_states``
    (inference mode only, as fla) ``(o, final_state, h)``: h the state entering each chunk of
    ``chunk_size`` (default 64) tokens, ``[B, NT, HV, K, V]`` (``[1, total chunks, ...]`` when
    packed) in q/k/v's dtype, without the final state (``delta_rule_chunk_states``). Not supported:
    ``cp_context``.
    """
    function = "chunk_kda"
    _refuse_context_parallel(function, cp_context)
    chunk_size = kwargs.get("chunk_size", 64)
    state_v_first, extra = _options(function, kwargs, state_v_first, ("A_log", "dt_bias"),
                                    KDA_CHUNKS)
    if return_intermediate_states:
        _check_intermediate_states(function, disable_recompute)
    _check_gates(function, q, v, g=(g, CHANNEL), beta=(beta, STEP),
                 A_log=(extra.get("A_log"), HEAD), dt_bias=(extra.get("dt_bias"), HEAD_CHANNEL))
    if use_gate_in_kernel:
        g = _kda_gate(g, extra.get("A_log"), extra.get("dt_bias"), lower_bound, function)
    beta = _beta(beta, use_beta_sigmoid_in_kernel, allow_neg_eigval, function)
    return _run_delta_rule(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state,
                           use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                           state_v_first=state_v_first, cu_seqlens=cu_seqlens,
                           states_chunk=chunk_size if return_intermediate_states else None)


def _check_intermediate_states(function: str, disable_recompute: bool) -> None:
    """fla's conditions on ``return_intermediate_states`` (asserts there, one-line errors here):
    the states bypass autograd, so only in inference mode, and not with disable_recompute."""
    if not torch.is_inference_mode_enabled():
        raise RuntimeError(f"{function}: return_intermediate_states=True needs "
                           f"torch.inference_mode(), as in fla (the states bypass autograd)")
    if disable_recompute:
        raise ValueError(f"{function}: return_intermediate_states=True needs "
                         f"disable_recompute=False, as in fla")


def fused_recurrent_kda(q, k, v, g, beta, A_log=None, dt_bias=None, scale=None,
                        initial_state=None, output_final_state=False,
                        use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False,
                        use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                        lower_bound=None, state_v_first=False, cu_seqlens=None, **kwargs):
    """fla's ``fused_recurrent_kda`` on ``seqtune.kernels.delta_rule``: arguments (``A_log`` and
    ``dt_bias`` positional here) and return value as ``chunk_kda``; single-token sequences run
    ``delta_rule_step``. Not supported: a per-channel beta ``[B, T, HV, V]``."""
    function = "fused_recurrent_kda"
    state_v_first, _ = _options(function, kwargs, state_v_first)
    _check_gates(function, q, v, g=(g, CHANNEL), beta=(beta, STEP), A_log=(A_log, HEAD),
                 dt_bias=(dt_bias, HEAD_CHANNEL))
    if use_gate_in_kernel:
        g = _kda_gate(g, A_log, dt_bias, lower_bound, function)
    beta = _beta(beta, use_beta_sigmoid_in_kernel, allow_neg_eigval, function)
    return _run_delta_rule(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state,
                           use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                           state_v_first=state_v_first, cu_seqlens=cu_seqlens, recurrent=True)


def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, cu_seqlens=None, cu_seqlens_cpu=None,
                     **kwargs):
    """fla's ``chunk_delta_rule`` (DeltaNet, no decay) on ``seqtune.kernels.delta_rule``:
    q, k ``[B, T, H, K]``, v ``[B, T, HV, V]``, beta ``[B, T, HV]``. Returns
    ``(o [B, T, HV, V], final_state [N, HV, K, V] float32 or None)``."""
    state_v_first, _ = _options("chunk_delta_rule", kwargs, False, (), DELTA_RULE_CHUNKS)
    _check_gates("chunk_delta_rule", q, v, beta=(beta, STEP))
    return _run_delta_rule(q, k, v, beta, None, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state,
                           use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                           state_v_first=state_v_first, cu_seqlens=cu_seqlens)


def fused_recurrent_delta_rule(q, k, v, beta=None, scale=None, initial_state=None,
                               output_final_state=False, use_qk_l2norm_in_kernel=False,
                               cu_seqlens=None):
    """fla's ``fused_recurrent_delta_rule`` on ``seqtune.kernels.delta_rule``: as
    ``chunk_delta_rule``, beta None meaning ones; single-token sequences run ``delta_rule_step``.
    Not supported: a per-channel beta ``[B, T, HV, V]``."""
    _check_gates("fused_recurrent_delta_rule", q, v, beta=(beta, STEP))
    if beta is None:
        beta = v.new_ones(v.shape[:3])
    return _run_delta_rule(q, k, v, beta, None, scale=scale, initial_state=initial_state,
                           output_final_state=output_final_state,
                           use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                           state_v_first=False, cu_seqlens=cu_seqlens, recurrent=True)


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False,
              state_v_first=False, cu_seqlens=None, cu_seqlens_cpu=None):
    """fla's ``chunk_gla`` (gated linear attention, per-key-channel log decay) on
    ``seqtune.kernels.linear_attention``: q, k ``[B, T, H, K]``, v ``[B, T, HV, V]``, g
    ``[B, T, HV, K]``. Returns ``(o [B, T, HV, V], final_state [N, HV, K, V] float32 or
    None)``, differentiable where the seqtune op is."""
    _check_gates("chunk_gla", q, v, g=(g, CHANNEL))
    return _run_linear_attention(q, k, v, g, scale=scale, initial_state=initial_state,
                                 output_final_state=output_final_state,
                                 state_v_first=state_v_first, cu_seqlens=cu_seqlens)


def fused_recurrent_gla(q, k, v, gk=None, gv=None, scale=None, initial_state=None,
                        output_final_state=False, reverse=False, state_v_first=False,
                        cu_seqlens=None, **kwargs):
    """fla's ``fused_recurrent_gla`` on ``seqtune.kernels.linear_attention``: gk
    ``[B, T, HV, K]`` (None: no decay); ``reverse`` runs each sequence from its last step
    (done by flipping the inputs, a copy); single-token sequences run ``linear_attention_step``.
    Otherwise as ``chunk_gla``. Not supported: ``gv``."""
    function = "fused_recurrent_gla"
    state_v_first, _ = _options(function, kwargs, state_v_first)
    if gv is not None:
        _refuse(function, "gv", gv, "decay over key channels (gk) only")
    _check_gates(function, q, v, gk=(gk, CHANNEL))
    return _run_linear_attention(q, k, v, gk, scale=scale, initial_state=initial_state,
                                 output_final_state=output_final_state,
                                 state_v_first=state_v_first, cu_seqlens=cu_seqlens,
                                 reverse=reverse, recurrent=True)


def _simple_gate(g: torch.Tensor | None, g_gamma: torch.Tensor | None, v: torch.Tensor
                 ) -> torch.Tensor | None:
    """The per-step head decay: g [B, T, HV], plus the constant g_gamma [HV] broadcast (a view
    when g is None)."""
    if g_gamma is None:
        return g
    gamma = g_gamma.float().expand(*v.shape[:3])
    return gamma if g is None else g.float() + gamma


def chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None,
                     output_final_state=False, state_v_first=False, cu_seqlens=None,
                     cu_seqlens_cpu=None, **kwargs):
    """fla's ``chunk_simple_gla`` (scalar decay per step and head: RetNet, Lightning) on
    ``seqtune.kernels.linear_attention``: g ``[B, T, HV]`` and/or the constant g_gamma ``[HV]``
    (summed when both are given; neither: no decay). Otherwise as ``chunk_gla``."""
    state_v_first, _ = _options("chunk_simple_gla", kwargs, state_v_first, (), POWER_OF_TWO)
    _check_gates("chunk_simple_gla", q, v, g=(g, STEP), g_gamma=(g_gamma, HEAD))
    return _run_linear_attention(q, k, v, _simple_gate(g, g_gamma, v), scale=scale,
                                 initial_state=initial_state,
                                 output_final_state=output_final_state,
                                 state_v_first=state_v_first, cu_seqlens=cu_seqlens)


def fused_recurrent_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None,
                               output_final_state=False, reverse=False, state_v_first=False,
                               cu_seqlens=None, **kwargs):
    """fla's ``fused_recurrent_simple_gla`` on ``seqtune.kernels.linear_attention``: as
    ``chunk_simple_gla``, with ``reverse`` and single-token sequences as in
    ``fused_recurrent_gla``."""
    state_v_first, _ = _options("fused_recurrent_simple_gla", kwargs, state_v_first)
    _check_gates("fused_recurrent_simple_gla", q, v, g=(g, STEP), g_gamma=(g_gamma, HEAD))
    return _run_linear_attention(q, k, v, _simple_gate(g, g_gamma, v), scale=scale,
                                 initial_state=initial_state,
                                 output_final_state=output_final_state,
                                 state_v_first=state_v_first, cu_seqlens=cu_seqlens,
                                 reverse=reverse, recurrent=True)
