"""Multiply-add counting on real (reduced) shapes, via fvcore.

tokenbench reports ``FLOPs = 2 × multiply-adds``. fvcore counts one fused
multiply-add as one "flop"; this module wraps :class:`fvcore.nn.FlopCountAnalysis`
so that

* ``aten::scaled_dot_product_attention`` (and the ``aten::_scaled_dot_product_*``
  kernels a trace may record) is counted — fvcore ignores it by default, which
  would silently drop the whole attention core of every SDPA model;
* ``aten::matmul`` is counted from its output shape, so broadcasting is right;
* any *matrix-multiplying* operator left without a handle raises
  :class:`UncountedOperatorError` instead of being skipped: a FLOPs number
  missing a matmul is wrong, not approximate. Elementwise operators (``mul``,
  ``silu``, ``softmax`` …) stay uncounted, as fvcore intends, and are listed in
  :attr:`MacCount.uncounted` for transparency;
* keyword arguments, including non-tensor ones (e.g. the ``(cos, sin)`` tuple a
  Hugging Face decoder layer takes as ``position_embeddings``, or a KV cache
  object), reach the module through a closure, so the jit tracer only sees the
  positional tensors. Tensors captured this way are constants of the trace;
  their shapes are still exact, which is all a count needs.

Tracing is slow (seconds for a large model), so :class:`MacCounter` caches the
count per caller-supplied shape key: a 1,000-sample run traces once per
distinct shape, not 1,000 times.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from tokenbench.errors import MeasurementError

__all__ = [
    "FLOPS_CONVENTION",
    "MATMUL_OPERATORS",
    "SDPA_OPERATORS",
    "MacCount",
    "MacCounter",
    "UncountedOperatorError",
    "count_macs",
    "flops_from_macs",
    "is_matmul_operator",
    "matmul_macs_from_output",
    "sdpa_flop_jit",
    "sdpa_macs",
]


@functools.cache
def _fvcore() -> Any:
    """fvcore's FLOP counting, imported on the first trace only (0.14 s of start-up that a run with stored FLOPs never needs).

    A namespace: ``FlopCountAnalysis``, ``default_handles`` (fvcore's private
    ``_DEFAULT_SUPPORTED_OPS``) and ``get_shape``.
    """
    import importlib
    from types import SimpleNamespace

    with warnings.catch_warnings():  # fvcore's import calls torch.jit.script, deprecated in torch >= 2.10
        warnings.simplefilter("ignore", DeprecationWarning)
        flop_count = importlib.import_module("fvcore.nn.flop_count")
        jit_handles = importlib.import_module("fvcore.nn.jit_handles")
    return SimpleNamespace(FlopCountAnalysis=flop_count.FlopCountAnalysis, default_handles=flop_count._DEFAULT_SUPPORTED_OPS, get_shape=jit_handles.get_shape)


FLOPS_CONVENTION = "FLOPs = 2 × multiply-adds (fvcore), causal attention not discounted"

#: A fvcore operator handle: ``(inputs, outputs) -> count`` on jit values.
Handle = Callable[[list[Any], list[Any]], Any]

#: Aten attention kernels whose first three inputs are query, key, value laid
#: out as ``(..., heads, length, head_dim)`` — counted by :func:`sdpa_flop_jit`.
SDPA_OPERATORS: tuple[str, ...] = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_attention_math",
    "aten::_scaled_dot_product_attention_math_for_mps",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_fused_attention_overrideable",
)

#: Operators that multiply matrices: a trace containing one of these without a
#: handle is an error, not a rounding difference.
MATMUL_OPERATORS: frozenset[str] = frozenset(
    {
        "aten::matmul",
        "aten::mm",
        "aten::bmm",
        "aten::addmm",
        "aten::linear",
        "aten::einsum",
        "aten::baddbmm",
        "aten::addbmm",
        "aten::mv",
        "aten::addmv",
        "aten::dot",
        "aten::vdot",
        "aten::tensordot",
        "aten::bilinear",
        "aten::chain_matmul",
        "aten::linalg_multi_dot",
        "aten::_addmm_activation",
        "aten::_int_mm",
        "aten::_scaled_mm",
        "aten::_convolution",
        "aten::_convolution_mode",
        "aten::convolution",
        "aten::_native_multi_head_attention",
        "aten::_transformer_encoder_layer_fwd",
        "aten::lstm",
        "aten::gru",
        "aten::rnn_tanh",
        "aten::rnn_relu",
        *SDPA_OPERATORS,
    }
)
_MATMUL_PREFIXES = (
    "aten::conv",  # conv1d/2d/3d, conv_transpose*, conv_tbc, convolution
    "aten::_scaled_dot_product_",
    "aten::_flash_attention",
    "aten::_efficient_attention",
    "aten::cudnn_convolution",
    "aten::mkldnn_convolution",
    "aten::_nnpack_spatial_convolution",
)


def is_matmul_operator(name: str) -> bool:
    """Whether a jit operator name (``"aten::bmm"``, or fvcore's short ``"bmm"``) multiplies matrices."""
    if "::" not in name:
        name = "aten::" + name
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]  # in-place variant, e.g. aten::baddbmm_
    return name in MATMUL_OPERATORS or name.startswith(_MATMUL_PREFIXES)


def flops_from_macs(macs: int) -> int:
    """FLOPs under tokenbench's convention (see :data:`FLOPS_CONVENTION`): 2 × MACs."""
    return 2 * int(macs)


class UncountedOperatorError(MeasurementError):
    """A matrix-multiplying operator appeared in the trace with no counting handle."""

    def __init__(self, operators: Mapping[str, int]) -> None:
        self.operators = dict(operators)
        listed = ", ".join(f"{op} (×{n})" for op, n in sorted(self.operators.items()))
        super().__init__(
            f"fvcore left matrix-multiplying operator(s) uncounted: {listed}. The MAC count "
            "would be too low; register a handle via count_macs(..., extra_handles={...})."
        )


def _shape(value: Any, what: str) -> list[int]:
    shape = _fvcore().get_shape(value)
    if shape is None:
        raise ValueError(f"jit trace has no complete shape for the {what} tensor")
    return list(shape)


def sdpa_macs(
    query_shape: tuple[int, ...] | list[int],
    key_shape: tuple[int, ...] | list[int],
    value_shape: tuple[int, ...] | list[int],
) -> int:
    """Multiply-adds of scaled-dot-product attention: ``B × H_q × L_q × L_k × (E_qk + E_v)``.

    ``Q Kᵀ`` costs ``L_q·L_k·E_qk`` per head and ``softmax(·) V`` ``L_q·L_k·E_v``.
    The head count is the *query's*: with grouped-query attention the keys and
    values have fewer heads, each shared by several query heads, but every query
    head still does its own products. An attention mask (causal or otherwise)
    does not change the count — masked positions are computed, then discarded,
    which is also how fvcore counts a causal ``matmul``.
    """
    *lead, l_q, e_qk = query_shape
    l_k, e_v = key_shape[-2], value_shape[-1]
    return math.prod(lead) * l_q * l_k * (e_qk + e_v)


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention`` and its aten variants (see :func:`sdpa_macs`)."""
    q = _shape(inputs[0], "query")
    k, v = _shape(inputs[1], "key"), _shape(inputs[2], "value")
    out = _fvcore().get_shape(outputs[0]) if outputs else None
    if out is not None and len(out) == len(q) and math.prod(out[:-2]) > math.prod(q[:-2]):
        q = [*out[:-2], *q[-2:]]  # query broadcast over the key/value batch
    return sdpa_macs(q, k, v)


def conv_mode_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::_convolution_mode`` (a convolution with ``padding="valid"``/``"same"``, e.g. SigLIP's
    patch embedding), which fvcore has none for: every output element takes ``C_in/groups × kernel`` multiply-adds."""
    weight = _shape(inputs[1], "weight")
    out = _fvcore().get_shape(outputs[0])
    return math.prod(out) * math.prod(weight[1:])


def matmul_macs_from_output(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::matmul``: ``numel(output) × K``, right under broadcasting and for 1-D operands.

    (fvcore's own handle uses ``numel(a) × b[-1]``, which undercounts
    ``(M,K) @ (B,K,N)`` and rejects vectors.)
    """
    a = _shape(inputs[0], "matmul left")
    out = _shape(outputs[0], "matmul output")
    return math.prod(out) * a[-1]


@dataclass(frozen=True)
class MacCount:
    """Multiply-adds of one traced forward pass.

    ``total`` is fvcore's total (matmuls, convolutions, attention, and the
    norm/pooling operators fvcore counts); ``by_operator`` splits it by fvcore's
    short operator name; ``uncounted`` names the (elementwise) operators that
    were seen but not counted.
    """

    total: int
    by_operator: dict[str, int] = field(default_factory=dict)
    uncounted: tuple[str, ...] = ()

    @property
    def matmul_total(self) -> int:
        """Multiply-adds of matrix-multiplying operators only (no norms): what an analytic count models."""
        return sum(n for op, n in self.by_operator.items() if op == "conv" or is_matmul_operator(op))

    @property
    def flops(self) -> int:
        """``2 × total`` (see :data:`FLOPS_CONVENTION`)."""
        return flops_from_macs(self.total)


def _tensor_leaves(obj: Any) -> list[torch.Tensor]:
    """The tensors inside a (nested) model output, in order; other objects (caches, None) dropped."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensor_leaves(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensor_leaves(v)]
    return []


class _KwargsClosure(torch.nn.Module):
    """Calls ``module(*args, **kwargs)`` with the kwargs fixed, returning only tensors, so jit tracing works."""

    def __init__(self, module: torch.nn.Module, kwargs: Mapping[str, Any]) -> None:
        super().__init__()
        self.module = module
        self._kwargs = dict(kwargs)

    def forward(self, *args: Any) -> tuple[torch.Tensor, ...]:
        return tuple(_tensor_leaves(self.module(*args, **self._kwargs)))


def count_macs(
    module: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None = None,
    *,
    extra_handles: Mapping[str, Handle | None] | None = None,
    strict: bool = True,
) -> MacCount:
    """Trace ``module(*args, **kwargs)`` once and count its multiply-adds.

    Args:
        module: the module to count (put it in ``eval()`` mode first).
        args: positional inputs; traced, so they should be tensors.
        kwargs: keyword inputs, closed over (any Python objects work).
        extra_handles: fvcore handles to add or override, keyed by operator
            name; ``None`` removes a handle, leaving the operator uncounted
            (unlike fvcore's ``set_op_handle(op=None)``, which ignores it).
        strict: raise :class:`UncountedOperatorError` when a matrix-multiplying
            operator is left uncounted (the default).

    Returns:
        A :class:`MacCount`.
    """
    wrapped = _KwargsClosure(module, kwargs or {})
    fv = _fvcore()
    analysis = fv.FlopCountAnalysis(wrapped, tuple(args))
    handles: dict[str, Handle | None] = dict(fv.default_handles)
    handles.update({name: sdpa_flop_jit for name in SDPA_OPERATORS})
    handles["aten::matmul"] = matmul_macs_from_output
    handles["aten::_convolution_mode"] = conv_mode_macs
    handles.update(extra_handles or {})
    # fvcore's set_op_handle(op=None) would *ignore* the op; here None means "no handle" (so uncounted)
    analysis.clear_op_handles()
    analysis.set_op_handle(**{op: h for op, h in handles.items() if h is not None})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    with torch.no_grad():
        by_operator = {op: int(n) for op, n in analysis.by_operator().items()}
    unsupported = analysis.unsupported_ops()
    missing = {op: n for op, n in unsupported.items() if is_matmul_operator(op)}
    if strict and missing:
        raise UncountedOperatorError(missing)
    return MacCount(
        total=sum(by_operator.values()),
        by_operator=by_operator,
        uncounted=tuple(sorted(unsupported)),
    )


class MacCounter:
    """Caches :func:`count_macs` by a caller-built key, typically ``(component, *shapes)``.

    The key must determine the count: a second call with the same key returns
    the first count without tracing, whatever its shapes. ``traces`` is the
    number of traces done; ``count_kwargs`` are passed on to :func:`count_macs`.
    :meth:`export` and :meth:`preload` carry the totals from one process to the next
    (the store keeps them per model), so a repeated or resumed run never traces again.

    >>> counter = MacCounter()
    >>> counter.preload({"('layer', 7)": 1234})
    >>> counter.count(("layer", 7), None, ())  # known: no trace, no module needed
    1234
    >>> counter.traces, ("layer", 7) in counter, counter.export()
    (0, True, {"('layer', 7)": 1234})
    """

    def __init__(self, **count_kwargs: Any) -> None:
        self._cache: dict[Hashable, MacCount] = {}
        self._known: dict[str, int] = {}
        self._count_kwargs = count_kwargs
        self.traces = 0

    def count(self, key: Hashable, module: torch.nn.Module | None, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None) -> int:
        """Total multiply-adds for ``key``, tracing only when the key is neither cached nor preloaded."""
        cached = self._cache.get(key)
        if cached is not None:
            return cached.total
        known = self._known.get(repr(key))
        if known is not None:
            return known
        return self.result(key, module, args, kwargs).total

    def result(self, key: Hashable, module: torch.nn.Module | None, args: tuple[Any, ...], kwargs: Mapping[str, Any] | None = None) -> MacCount:
        """Like :meth:`count`, returning the whole :class:`MacCount` (traced in this process: preloaded totals have no breakdown)."""
        cached = self._cache.get(key)
        if cached is None:
            if module is None:
                raise ValueError(f"no multiply-adds known for {key!r} and no module to trace")
            cached = count_macs(module, args, kwargs, **self._count_kwargs)
            self.traces += 1
            self._cache[key] = cached
        return cached

    def export(self) -> dict[str, int]:
        """Every known total by ``repr(key)``: what :meth:`preload` takes back."""
        return {**self._known, **{repr(k): v.total for k, v in self._cache.items()}}

    def preload(self, totals: Mapping[str, int]) -> None:
        """Totals an earlier process traced (:meth:`export`): :meth:`count` returns them without tracing."""
        self._known.update({str(k): int(v) for k, v in totals.items()})

    def __contains__(self, key: Hashable) -> bool:
        return key in self._cache or repr(key) in self._known

    def __len__(self) -> int:
        return len(self.export())

    def clear(self) -> None:
        """Forget every cached and preloaded count."""
        self._cache.clear()
        self._known.clear()
