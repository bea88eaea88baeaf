"""Custom Functions that ``torch.compile`` can capture in one graph.

Dynamo (torch 2.13) traces a ``torch.autograd.Function`` whose ``forward``, ``setup_context`` and
``backward`` are pure torch into the graph, forward and backward, but it refuses any Function that
defines a custom ``jvp`` ("Unsupported custom jvp": a graph break, an error under
``fullgraph=True``). Functions that give forward mode (``torch.autograd.forward_ad``,
``torch.func.jvp``) a hand-written rule therefore get a twin without it, used only while Dynamo
traces::

    _FluxForTracing = without_jvp(_FluxFunction)

    def flux(...):
        function = _FluxForTracing if torch.compiler.is_compiling() else _FluxFunction
        return function.apply(...)

Dynamo folds ``torch.compiler.is_compiling()`` to True, so the compiled graph holds the twin,
whose forward, ``setup_context`` and backward are the original's: values and reverse-mode
gradients are identical. Eager calls (and any frame Dynamo falls back to eager for) keep the
original, so forward mode is unchanged outside ``torch.compile``, which has no forward mode for
custom Functions to offer anyway. The twin must be a module-level name: Dynamo follows a global
class to its ``apply``, not a class stored as an attribute of another.
"""

from __future__ import annotations

from typing import TypeVar

import torch

__all__ = ["without_jvp"]

FunctionT = TypeVar("FunctionT", bound=type[torch.autograd.Function])


def without_jvp(function: FunctionT) -> FunctionT:
    """A subclass of the custom Function ``function`` whose ``jvp`` is the base (not implemented).

    Args:
        function: A ``torch.autograd.Function`` subclass that defines ``jvp``.

    Returns:
        The twin ``<Name>ForTracing``: same ``forward``, ``setup_context``, ``backward`` and vmap
        rule; forward mode raises as for a Function without ``jvp``.

    >>> import torch
    >>> class _Square(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(x): return x * x
    ...     @staticmethod
    ...     def setup_context(ctx, inputs, output): ctx.save_for_backward(*inputs)
    ...     @staticmethod
    ...     def backward(ctx, g): return 2 * g * ctx.saved_tensors[0]
    ...     @staticmethod
    ...     def jvp(ctx, t): return 2 * t * ctx.saved_tensors[0]
    >>> twin = without_jvp(_Square)
    >>> twin.jvp is torch.autograd.Function.jvp, twin.__name__
    (True, '_SquareForTracing')
    """
    if function.jvp is torch.autograd.Function.jvp:
        raise ValueError(f"{function.__name__} defines no jvp; use it as it is.")
    namespace = {
        "jvp": staticmethod(torch.autograd.Function.jvp),
        "__doc__": f"{function.__name__} without its custom jvp, for torch.compile to capture.",
        "__module__": function.__module__,
        "__qualname__": f"{function.__qualname__}ForTracing",
    }
    twin: FunctionT = type(f"{function.__name__}ForTracing", (function,), namespace)  # type: ignore[assignment]
    return twin
