"""Which transformers layers seqtune can patch, found by the hub-kernel functions they call rather
than by a list of class names, so that a new model family built on the same functions works
without a change here.

transformers marks each swappable function of a modeling file with
``use_kernel_func_from_hub_with_fallback(func_name, package)``; the wrapper it returns keeps
``func_name`` (``hub_name``). A layer class is a recurrent layer when one of its
methods, or a plain function of its modeling module that a method calls, refers to such a
function by a module-level name (``layer_plan``); a plain PyTorch function that a modeling file
defines under a hub function's name, without the wrapper, counts as that function
(``STAND_INS``). Its kind follows from the mechanism those
functions implement (``KINDS``). An attention layer whose forward reads the attention mask
itself, besides handing it to the attention function, needs transformers' own 4-D mask
(``reads_its_mask``).
"""
from __future__ import annotations

import dataclasses
import dis
import inspect
import types
from collections.abc import Callable, Iterator

# The first mechanism a layer's hub functions name decides its kind; convolutions alone make a
# short-convolution layer (LFM2, Inkling).
KINDS = (
    ("gated_delta_net", {"chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"}),
    ("kda", {"chunk_kda", "fused_recurrent_kda"}),
    ("mamba2", {"mamba_chunk_scan_combined", "mamba_split_conv1d_scan_combined"}),
    ("mamba", {"selective_scan_fn", "mamba_inner_fn"}),
    ("short_conv", {"causal_conv1d_fn", "causal_conv1d_update"}),
)

# Hub functions a modeling file may define in plain PyTorch under their own name and contract
# but without transformers' hub wrapper: LFM3's width-7 convolution (the hub causal-conv1d
# kernels stop at width 4, so transformers gives it no hub mapping). No wrapper holds the name,
# so it is recognised by the name the function is defined and called under.
STAND_INS = frozenset({"causal_conv1d_fn", "causal_conv1d_update"})


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """A recurrent layer class: its ``kind``, the module-level names its code calls mapped to
    their hub function names (``calls``), the methods (``methods``) and module functions
    (``helpers``) whose code refers to them (directly or through a helper), and hub functions
    it calls that seqtune does not implement (``unsupported``)."""

    kind: str
    calls: dict[str, str]
    methods: tuple[str, ...]
    helpers: dict[str, types.FunctionType]
    unsupported: tuple[str, ...]


def hub_name(obj) -> str | None:
    """The hub function name transformers' hub-kernel wrapper gave ``obj``, or None. With the
    ``kernels`` package installed the wrapper is a module holding the name as
    ``kernel_layer_name``; without it, a function keeping ``func_name`` in its closure."""
    layer_name = getattr(obj, "kernel_layer_name", None)
    if isinstance(layer_name, str):
        return layer_name
    seen = 0
    while obj is not None and seen < 16:  # a wrapper chain, bounded
        code = getattr(obj, "__code__", None)
        closure = getattr(obj, "__closure__", None)
        if code is not None and closure and "func_name" in code.co_freevars:
            value = closure[code.co_freevars.index("func_name")].cell_contents
            return value if isinstance(value, str) else None
        obj, seen = getattr(obj, "__wrapped__", None), seen + 1
    return None


def _stand_in(obj, name: str, caller: types.FunctionType) -> str | None:
    """``name`` when ``obj`` is a ``STAND_INS`` function that ``caller``'s transformers module
    defines itself under that name, else None."""
    if (name in STAND_INS and isinstance(obj, types.FunctionType) and obj.__name__ == name
            and obj.__module__ == caller.__module__
            and obj.__module__.startswith("transformers.")):
        return name
    return None


def _wrapped_by_kernels(obj) -> types.FunctionType | None:
    """The function a ``kernels`` function module wraps (the ``func`` its forward closes
    over), else None."""
    forward = getattr(type(obj), "forward", None)
    code = getattr(forward, "__code__", None)
    if code is None or "func" not in code.co_freevars or not forward.__closure__:
        return None
    inner = forward.__closure__[code.co_freevars.index("func")].cell_contents
    return inner if isinstance(inner, types.FunctionType) else None


def _helper(obj, caller: types.FunctionType) -> types.FunctionType | None:
    """``obj`` as a plain function of ``caller``'s module that a patch can rebuild (a
    ``kernels`` function module's own function included), else None."""
    function = obj if isinstance(obj, types.FunctionType) else _wrapped_by_kernels(obj)
    if (function is None or function is caller or hasattr(function, "__wrapped__")
            or function.__module__ != caller.__module__):
        return None
    return function


def _names(code: types.CodeType) -> Iterator[str]:
    """The global (and attribute) names ``code`` and the functions nested in it refer to."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _plain(function) -> types.FunctionType | None:
    function = inspect.unwrap(function) if callable(function) else None
    return function if isinstance(function, types.FunctionType) else None


def _methods(cls: type) -> dict[str, types.FunctionType]:
    """The plain-function methods of ``cls`` from its transformers classes (the first in the MRO
    wins), unwrapped."""
    found: dict[str, types.FunctionType] = {}
    for base in cls.__mro__:
        if not base.__module__.startswith("transformers."):
            continue
        for name, value in vars(base).items():
            function = _plain(value) if not isinstance(value, (staticmethod, classmethod)) else None
            if function is not None and name not in found:
                found[name] = function
    return found


def _hub_calls(function: types.FunctionType, known: Callable[[str], bool],
               helpers: dict[str, bool], calls: dict[str, str]) -> bool:
    """Whether ``function`` refers to a hub function (or a helper that does), adding each
    name to ``calls`` (hub functions) or ``helpers`` (plain functions of its module, among
    them a hub-wrapped block seqtune does not know whose own code calls ``known`` ones)."""
    module_globals, refers = function.__globals__, False
    for name in set(_names(function.__code__)):
        obj = module_globals.get(name)
        hub = (hub_name(obj) or _stand_in(obj, name, function)) if callable(obj) else None
        helper = _helper(obj, function) if hub is None or not known(hub) else None
        if helper is not None:
            if name not in helpers:
                helpers[name] = False  # visiting: a recursive helper refers through itself
                helpers[name] = _hub_calls(helper, known, helpers, calls)
            refers = refers or helpers[name]
        elif hub is not None:
            calls[name], refers = hub, True
    return refers


def layer_plan(cls: type, supported: Callable[[str], bool]) -> LayerPlan | None:
    """The recurrent-layer plan of ``cls`` (None: it calls no hub function)."""
    calls: dict[str, str] = {}
    helpers: dict[str, bool] = {}
    methods = tuple(name for name, function in _methods(cls).items()
                    if _hub_calls(function, supported, helpers, calls))
    if not methods:
        return None
    hubs = set(calls.values())
    kind = next((kind for kind, names in KINDS if hubs & names), None)
    if kind is None:
        return None
    caller = _methods(cls)[methods[0]]
    return LayerPlan(kind, calls, methods,
                     {name: _helper(caller.__globals__[name], caller)
                      for name, refers in helpers.items() if refers},
                     tuple(sorted(hub for hub in hubs if not supported(hub))))


def dispatches_attention(cls: type) -> bool:
    forward = _plain(getattr(cls, "forward", None))
    return forward is not None and "ALL_ATTENTION_FUNCTIONS" in forward.__code__.co_names


def passes_position_bias(cls: type) -> bool:
    """Whether ``cls.forward`` hands a ``position_bias`` keyword to a function it calls
    (Inkling's relative-position logits, added to the scores): seqtune's attention adds no
    bias. A call's keyword names are a tuple among the code's constants."""
    forward = _plain(getattr(cls, "forward", None))
    return forward is not None and any(isinstance(const, tuple) and "position_bias" in const
                                       for const in forward.__code__.co_consts)


def reads_its_mask(cls: type) -> bool:
    """Whether ``cls.forward`` uses ``attention_mask`` beyond passing it on once (e.g. a token
    indexer combining it with its own selection): such a layer needs transformers' 4-D mask,
    which seqtune's attention (a 2-D padding mask) does not build."""
    forward = _plain(getattr(cls, "forward", None))
    if forward is None:
        return False
    loads = [instruction for instruction in dis.get_instructions(forward)
             if instruction.opname.startswith("LOAD") and instruction.argval == "attention_mask"]
    return len(loads) > 1
