"""NumPy and compiled callables as ``torch.library`` custom operators, opaque to torch.compile.

:func:`external` runs its callable inside a ``torch.autograd.Function`` whose forward reads tensor
data into NumPy: Dynamo cannot trace that, so ``torch.compile`` breaks the graph there (an error
under ``fullgraph=True``). :func:`external_op` wraps the same callable with the same machinery
(structures, finite differences, complex step or a user derivative, :class:`CallCounter`, the same
checks and messages) and registers it as a custom operator ``namespace::name``
(``torch.library.custom_op``) with

* a fake (meta) implementation: output shapes and dtypes come from a declared ``outputs=`` rule,
  or from one probe call on ``example_inputs`` generalised by the Jacobian structure, so tracing
  with fake tensors never runs the callable;
* its autograd formula (``register_autograd``): the backward is a second custom operator,
  ``namespace::name_backward``, which runs :meth:`ExternalFunction.vector_jacobian_product`.

A compiled graph then holds two opaque calls (forward and backward) instead of breaking, so the
torch code around a Fortran scheme compiles as one graph; the scheme itself runs as before, on
the CPU, in NumPy.

Example:
    >>> import numpy as np, torch
    >>> def blackbody(temperature):
    ...     return 5.670374419e-8 * temperature**4
    >>> emission = external_op(
    ...     blackbody, "climgrad_doc::blackbody", structure="elementwise",
    ...     outputs=lambda temperature: temperature.shape,
    ... )
    >>> t = torch.tensor([250.0, 300.0], dtype=torch.float64, requires_grad=True)
    >>> emission(t).sum().backward()  # the same inside torch.compile(..., fullgraph=True)
    >>> torch.allclose(t.grad, 4 * 5.670374419e-8 * t.detach() ** 3, rtol=1e-8)
    True
    >>> emission.calls.backward, emission.custom_op
    (2, <CustomOpDef(climgrad_doc::blackbody)>)

Not supported on this path (use :func:`external`): forward mode (custom operators take no
``jvp`` rule), ``torch.func`` transforms that need a batching rule (``vmap``, ``jacrev``,
``jacfwd``), non-tensor arguments (bind them with ``functools.partial`` before wrapping), and
double backward. See ``docs/autograd.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from climgrad.autograd.external import (
    _FLOAT_DTYPES,
    Array,
    ExternalFunction,
    ExternalFunctionError,
    Method,
    Structure,
    _from_numpy,
    _output_dtype_device,
    _to_numpy,
)

__all__ = ["ExternalOp", "OutputShapes", "external_op"]

#: ``outputs(*inputs)`` -> the output shape (a tuple or ``torch.Size``) for a callable with one
#: output, or a list of shapes for one returning a tuple. ``inputs`` are the call's tensors (fake
#: tensors while tracing: read their shapes, never their values).
OutputShapes = Callable[..., Any]

_FORWARD_SCHEMA = "(Tensor[] inputs) -> Tensor[]"
_BACKWARD_SCHEMA = (
    "(Tensor[] inputs, Tensor[] outputs, Tensor[] cotangents, bool[] needs) -> Tensor[]"
)


def _owned(array: Array, others: Sequence[Any]) -> Array:
    """``array``, copied if it shares memory with any of ``others`` (custom ops may not alias)."""
    if any(isinstance(o, np.ndarray) and np.may_share_memory(array, o) for o in others):
        return np.array(array, copy=True)
    return array


def _split_name(op_name: str) -> tuple[str, str]:
    namespace, separator, name = op_name.partition("::")
    if not separator or not namespace.isidentifier() or not name.isidentifier():
        raise ValueError(
            f"op_name must read 'namespace::name' with two Python identifiers, got {op_name!r}; "
            "for example 'my_project::gray_radiation'."
        )
    return namespace, name


class ExternalOp(ExternalFunction):
    """An :class:`ExternalFunction` registered as a custom operator; create it with
    :func:`external_op`.

    Call it with float32/float64 tensors (positional, tensors only); it returns a tensor, or a
    tuple of tensors when the callable returns a tuple. ``custom_op`` is the registered
    ``torch.library`` operator (for ``torch.library.opcheck``; it takes the list of inputs),
    ``backward_op`` the operator of its backward pass.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        op_name: str,
        *,
        outputs: OutputShapes | None = None,
        example_inputs: Sequence[Tensor] | None = None,
        structure: Structure = "dense",
        method: Method = "central",
        rel_step: float | None = None,
        abs_step: float | None = None,
        fd_dtype: torch.dtype | None = None,
        jvp: Callable[..., Any] | None = None,
        vjp: Callable[..., Any] | None = None,
        jacobian: Callable[..., Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            fn,
            structure=structure,
            method=method,
            rel_step=rel_step,
            abs_step=abs_step,
            fd_dtype=fd_dtype,
            jvp=jvp,
            vjp=vjp,
            jacobian=jacobian,
            name=name,
        )
        namespace, short_name = _split_name(op_name)
        if (outputs is None) == (example_inputs is None):
            raise ValueError(
                f"{self.name}: give exactly one of outputs= (a rule from input shapes to output "
                "shapes) and example_inputs= (tensors for one probe call that fixes the rule)."
            )
        self.op_name = op_name
        self._declared = outputs
        self._probe_returns_tuple = False
        self._probe_rule: Callable[[Sequence[Tensor]], list[tuple[int, ...]]] | None = None
        if example_inputs is not None:
            self._check_inputs(example_inputs)
            self._probe(list(example_inputs))
        # Only forward differences read the forward outputs in the backward pass.
        self._saves_outputs = method == "forward" and jvp is None and vjp is None
        self.custom_op = self._register_forward(op_name)
        self.backward_op = self._register_backward(f"{op_name}_backward")
        self.custom_op.register_autograd(self._autograd_backward, setup_context=self._setup_context)
        self._op = getattr(getattr(torch.ops, namespace), short_name).default
        self._backward = getattr(getattr(torch.ops, namespace), f"{short_name}_backward").default

    def __repr__(self) -> str:
        inner = super().__repr__().removeprefix("ExternalFunction(")
        return f"ExternalOp({self.op_name!r}, {inner}"

    # ------------------------------------------------------------------------------------------
    # Calling

    def __call__(self, *inputs: Any) -> Any:
        self._check_inputs(inputs)
        if not torch.compiler.is_compiling() and any(
            torch.autograd.forward_ad.unpack_dual(t).tangent is not None for t in inputs
        ):
            raise NotImplementedError(
                f"{self.name}: an external_op has no forward mode (custom operators take no jvp "
                "rule); wrap the callable with external() for forward-mode AD."
            )
        outputs = self._op(list(inputs))
        return tuple(outputs) if self._returns_tuple_for(inputs) else outputs[0]

    def _check_inputs(self, inputs: Sequence[Any]) -> None:
        if not inputs:
            raise ExternalFunctionError(f"{self.name}: an external_op needs at least one tensor.")
        for position, value in enumerate(inputs):
            if not isinstance(value, Tensor):
                raise ExternalFunctionError(
                    f"{self.name}: input {position} is a {type(value).__name__}; an external_op "
                    "takes tensors only. Bind constants before wrapping, e.g. "
                    "external_op(functools.partial(fn, constant=...), ...), or use external()."
                )
            if value.dtype not in _FLOAT_DTYPES:
                raise ExternalFunctionError(
                    f"{self.name}: input {position} has dtype {value.dtype}, which external_op() "
                    "does not support; cast it with .float() or .double()."
                )

    def _returns_tuple_for(self, inputs: Sequence[Tensor]) -> bool:
        if self._declared is None:
            return self._probe_returns_tuple
        return isinstance(self._declared(*inputs), list)

    # ------------------------------------------------------------------------------------------
    # Output shapes: the fake implementation's rule

    def output_shapes(self, inputs: Sequence[Tensor]) -> list[tuple[int, ...]]:
        """The output shapes for ``inputs`` (real or fake tensors), from the declared rule.

        Args:
            inputs: The positional tensors of a call.

        Returns:
            One shape per output.
        """
        if self._declared is not None:
            declared = self._declared(*inputs)
            shapes = declared if isinstance(declared, list) else [declared]
            return [tuple(shape) for shape in shapes]
        assert self._probe_rule is not None
        return self._probe_rule(inputs)

    def _probe(self, example_inputs: list[Tensor]) -> None:
        """One call on ``example_inputs``; generalise its output shapes by the structure."""
        arrays = [_to_numpy(value) for value in example_inputs]
        self.calls.forward += 1
        outputs = self._call(arrays, "the probe call of external_op")
        self._probe_returns_tuple = self._returns_tuple
        batch = self._batch_shape(outputs, example_inputs)
        count = len(outputs)
        if self.structure == "elementwise":

            def elementwise(inputs: Sequence[Tensor]) -> list[tuple[int, ...]]:
                shape = tuple(torch.broadcast_shapes(*(x.shape for x in inputs)))
                return [shape] * count

            self._probe_rule = elementwise
        elif self.structure == "column":
            kinds = [
                self._input_kind(i, tuple(x.shape), batch) for i, x in enumerate(example_inputs)
            ]
            levels = [output.shape[-1] for output in outputs]

            def column(inputs: Sequence[Tensor]) -> list[tuple[int, ...]]:
                columns = torch.broadcast_shapes(
                    *(
                        x.shape[:-1] if kind == "profile" else x.shape
                        for x, kind in zip(inputs, kinds)
                    )
                )
                return [(*columns, m) for m in levels]

            self._probe_rule = column
        else:
            probed_inputs = [tuple(x.shape) for x in example_inputs]
            probed = [tuple(output.shape) for output in outputs]

            def dense(inputs: Sequence[Tensor]) -> list[tuple[int, ...]]:
                shapes = [tuple(x.shape) for x in inputs]
                if shapes != probed_inputs:
                    raise ExternalFunctionError(
                        f"{self.name}: with structure='dense' the output shapes come from the "
                        f"probe call on inputs of shapes {probed_inputs}; got {shapes}. Declare "
                        "how output shapes follow the inputs with outputs= instead."
                    )
                return probed

            self._probe_rule = dense

    # ------------------------------------------------------------------------------------------
    # Operators

    def _register_forward(self, op_name: str) -> Any:
        def forward(inputs: list[Tensor]) -> list[Tensor]:
            arrays = [_to_numpy(value) for value in inputs]
            self.calls.forward += 1
            outputs = self._call(arrays, "the forward pass")
            self._batch_shape(outputs, inputs)
            expected = self.output_shapes(inputs)
            got = [tuple(output.shape) for output in outputs]
            if got != expected:
                raise ExternalFunctionError(
                    f"{self.name} returned outputs of shapes {got}, but the op's rule "
                    f"(outputs= or the probe call) gives {expected} for inputs of shapes "
                    f"{[tuple(x.shape) for x in inputs]}. Fix outputs= so that torch.compile "
                    "sees the true shapes."
                )
            dtype, device = _output_dtype_device(inputs)
            owned: list[Array] = []
            for output in outputs:
                owned.append(_owned(output, [*arrays, *owned]))
            return [_from_numpy(output, dtype, device) for output in owned]

        def fake(inputs: list[Tensor]) -> list[Tensor]:
            dtype, device = _output_dtype_device(inputs)
            return [
                torch.empty(shape, dtype=dtype, device=device)
                for shape in self.output_shapes(inputs)
            ]

        operator = torch.library.custom_op(
            op_name, forward, mutates_args=(), schema=_FORWARD_SCHEMA
        )
        operator.register_fake(fake)
        return operator

    def _register_backward(self, op_name: str) -> Any:
        def backward(
            inputs: list[Tensor],
            outputs: list[Tensor],
            cotangents: list[Tensor],
            needs: list[bool],
        ) -> list[Tensor]:
            arrays = [_to_numpy(value) for value in inputs]
            forward_outputs = [_to_numpy(value) for value in outputs]
            cotangent_arrays = [_to_numpy(value) for value in cotangents]
            gradients = self.vector_jacobian_product(
                arrays, forward_outputs, cotangent_arrays, needs
            )
            everything = [*arrays, *forward_outputs, *cotangent_arrays]
            result = []
            for x, gradient, need in zip(inputs, gradients, needs):
                if not need:
                    continue
                if gradient is None:  # a user vjp may return None for an input it ignores
                    result.append(torch.zeros_like(x))
                else:
                    result.append(_from_numpy(_owned(gradient, everything), x.dtype, x.device))
            return result

        def fake(
            inputs: list[Tensor],
            outputs: list[Tensor],
            cotangents: list[Tensor],
            needs: list[bool],
        ) -> list[Tensor]:
            return [torch.empty_like(x) for x, need in zip(inputs, needs) if need]

        operator = torch.library.custom_op(
            op_name, backward, mutates_args=(), schema=_BACKWARD_SCHEMA
        )
        operator.register_fake(fake)
        return operator

    def _setup_context(self, ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        (tensors,) = inputs
        ctx.n_inputs = len(tensors)
        ctx.save_for_backward(*tensors, *(output if self._saves_outputs else ()))

    def _autograd_backward(self, ctx: Any, grads: list[Tensor]) -> tuple[list[Tensor | None]]:
        (needs,) = ctx.needs_input_grad
        needs = [bool(need) for need in needs]
        if not any(needs):
            return ([None] * ctx.n_inputs,)
        saved = ctx.saved_tensors
        inputs, outputs = list(saved[: ctx.n_inputs]), list(saved[ctx.n_inputs :])
        computed = iter(self._backward(inputs, outputs, list(grads), needs))
        return ([next(computed) if need else None for need in needs],)


def external_op(
    fn: Callable[..., Any],
    op_name: str,
    *,
    outputs: OutputShapes | None = None,
    example_inputs: Sequence[Tensor] | None = None,
    structure: Structure = "dense",
    method: Method = "central",
    rel_step: float | None = None,
    abs_step: float | None = None,
    fd_dtype: torch.dtype | None = None,
    jvp: Callable[..., Any] | None = None,
    vjp: Callable[..., Any] | None = None,
    jacobian: Callable[..., Any] | None = None,
    name: str | None = None,
) -> ExternalOp:
    """Wrap a NumPy callable as a differentiable custom operator that torch.compile keeps whole.

    Same derivative options, structures, counters and errors as
    :func:`~climgrad.autograd.external` (see there), plus the operator's name and a rule for its
    output shapes.

    Args:
        fn: ``fn(*arrays) -> array | tuple of arrays``; every argument is a tensor, handed over as
            a NumPy array on the CPU.
        op_name: ``"namespace::name"`` (``"namespace::name_backward"`` is registered too). Pick
            a namespace of your own project. As with ``torch.library.custom_op``, registering a
            name again replaces the earlier operator; do not call the earlier object after that.
        outputs: ``outputs(*inputs) -> shape`` (one output) or ``-> [shape, ...]`` (a tuple of
            outputs), from the inputs' shapes; the fake implementation and a check of every real
            call use it.
        example_inputs: Instead of ``outputs``: tensors for one probe call (counted in
            ``calls.forward``), whose output shapes are generalised by ``structure``:
            elementwise outputs take the broadcast input shape; column outputs ``(*batch, M_o)``
            keep their ``M_o`` and take the batch shape from the inputs (each input staying a
            profile or a per-column field as in the probe); dense outputs keep the probed shapes
            and accept only inputs of the probed shapes.
        structure: ``"dense"``, ``"elementwise"`` or ``"column"`` (see :func:`external`).
        method: ``"central"``, ``"forward"`` or ``"complex"``.
        rel_step: Relative finite-difference step (default from the dtype and method).
        abs_step: Step where ``x_k = 0``.
        fd_dtype: Dtype of the perturbed calls.
        jvp: User Jacobian-vector product, as for :func:`external`.
        vjp: User vector-Jacobian product.
        jacobian: User Jacobian blocks.
        name: Name used in messages (default: ``fn.__name__``).

    Returns:
        An :class:`ExternalOp`.

    Raises:
        ValueError: A malformed ``op_name``, or not exactly one of ``outputs`` and
            ``example_inputs``.
        ExternalFunctionError: As for :func:`external`; also when a call's outputs disagree with
            the shape rule, or an argument is not a float32/float64 tensor.
    """
    return ExternalOp(
        fn,
        op_name,
        outputs=outputs,
        example_inputs=example_inputs,
        structure=structure,
        method=method,
        rel_step=rel_step,
        abs_step=abs_step,
        fd_dtype=fd_dtype,
        jvp=jvp,
        vjp=vjp,
        jacobian=jacobian,
        name=name,
    )
