"""Differentiate code that autograd cannot see: NumPy routines and compiled Fortran or C.

:func:`external` wraps a callable that takes and returns NumPy arrays so that it takes and returns
tensors inside a torch graph. Its backward pass is a vector-Jacobian product built from

* finite differences of the wrapped callable (``method="central"``, the default, or ``"forward"``),
* the complex-step derivative ``Im f(x + i h) / h`` (``method="complex"``; exact to rounding, for
  callables that accept complex input; Squire & Trapp 1998, SIAM Review 40, 110), or
* a derivative the user supplies: ``jvp=``, ``vjp=`` or ``jacobian=``.

Finite-difference cost follows the declared Jacobian ``structure``, not the batch size:

``"elementwise"``
    Output element ``k`` depends only on input element ``k`` (after broadcasting). One probe per
    input perturbs every element at once: 2 calls per input (central differences).
``"column"``
    Inputs ``(..., L)`` and outputs ``(..., M)`` share the batch shape ``...`` (the columns), and
    columns are independent. Perturbing level ``k`` in every column at once gives the whole
    ``k``-th Jacobian column for all columns: 2 L calls per profile input, whatever the number of
    columns. An input of shape broadcastable to the batch shape (a scalar, or one value per column,
    such as surface temperature) costs 2 calls; a profile shared by all columns must be given as
    ``(1, L)`` (its leading dimensions broadcast to the batch shape) and costs 2 L calls.
``"dense"``
    No structure: every input element is perturbed on its own, 2 n calls for n elements.

The wrapped callable is always called on the whole batch, never per column. Each call and its cost
is counted in :attr:`ExternalFunction.calls`.

Step size: the perturbation of element ``x_k`` is ``h_k = rel_step * |x_k|`` (``abs_step`` where
``x_k = 0``), rounded so that ``x_k + h_k`` is exact. The default ``rel_step`` balances truncation
against rounding error: ``eps**(1/3)`` for central and ``eps**(1/2)`` for forward differences, with
``eps`` the machine epsilon of the dtype the callable runs in (float64: 6.1e-6 and 1.5e-8; float32:
4.9e-3 and 3.5e-4). Central differences of a smooth function are then accurate to about
``eps**(2/3)``: 1e-10 relative in float64, but only 1e-4 to 1e-3 in float32. For float32 tensors,
``fd_dtype=torch.float64`` runs the perturbed calls in float64 (when the callable accepts it),
which restores float64 accuracy; see ``docs/autograd.md``.

Example:
    >>> import numpy as np, torch
    >>> from climgrad.autograd import external
    >>> def blackbody(temperature):  # NumPy in, NumPy out
    ...     return 5.670374419e-8 * temperature**4
    >>> emission = external(blackbody, structure="elementwise")
    >>> t = torch.tensor([250.0, 300.0], dtype=torch.float64, requires_grad=True)
    >>> emission(t).sum().backward()
    >>> torch.allclose(t.grad, 4 * 5.670374419e-8 * t.detach()**3, rtol=1e-8)
    True
    >>> emission.calls.backward  # central differences: 2 calls for the whole batch
    2
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.autograd.function import once_differentiable

from climgrad.validation import check_choice, check_positive, is_transformed

__all__ = ["CallCounter", "ExternalFunction", "ExternalFunctionError", "external"]

Structure = Literal["dense", "elementwise", "column"]
Method = Literal["central", "forward", "complex"]
STRUCTURES: tuple[str, ...] = ("dense", "elementwise", "column")
METHODS: tuple[str, ...] = ("central", "forward", "complex")
_FLOAT_DTYPES = (torch.float32, torch.float64)
Array = NDArray[Any]


class ExternalFunctionError(ValueError):
    """A wrapped callable returned something that contradicts its declaration, or bad inputs."""


@dataclass
class CallCounter:
    """How often the wrapped callable (and any user derivative) has been called.

    Attributes:
        forward: Calls made by forward passes.
        backward: Calls of the wrapped callable made by backward passes (finite-difference probes).
        derivative: Calls of a user-supplied ``jvp``, ``vjp`` or ``jacobian``.
        last_backward: Calls of the wrapped callable made by the most recent backward pass.
        tangent: Calls of the wrapped callable made by forward-mode passes (Jacobian-vector
            products: 2 per product with central differences, whatever the structure).
    """

    forward: int = 0
    backward: int = 0
    derivative: int = 0
    last_backward: int = 0
    tangent: int = 0

    @property
    def total(self) -> int:
        """All calls of the wrapped callable."""
        return self.forward + self.backward + self.tangent

    def reset(self) -> None:
        """Set every count to zero."""
        self.forward = self.backward = self.derivative = self.last_backward = self.tangent = 0


@dataclass(frozen=True)
class _Probe:
    """One perturbation direction and how to attribute the output change back to the input.

    ``direction`` has the input's shape (steps where perturbed, zeros elsewhere). ``step`` is
    broadcastable to the outputs' batch shape: the step of the input element each output saw.
    ``index`` selects the gradient entries the probe estimates (``...`` for all of them).
    """

    direction: Array
    step: Array
    index: Any


def _sum_to_shape(array: Array, shape: tuple[int, ...]) -> Array:
    """Sum ``array`` over the dimensions that broadcasting added or expanded from size 1."""
    extra = array.ndim - len(shape)
    if extra > 0:
        array = array.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, size in enumerate(shape) if size == 1 and array.shape[i] != 1)
    if axes:
        array = array.sum(axis=axes, keepdims=True)
    return array.reshape(shape)


def _where(index: tuple[int, ...]) -> str:
    return f" at index {index}" if index else ""


class ExternalFunction:
    """A NumPy callable made differentiable; create it with :func:`external`.

    Call it with tensors (positional); it returns a tensor, or a tuple of tensors when the wrapped
    callable returns a tuple. Non-tensor arguments are passed through unchanged and are not
    differentiated. See :func:`external` for the options.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
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
        if not callable(fn):
            raise TypeError(f"external() needs a callable, got {type(fn).__name__}.")
        check_choice("structure", structure, STRUCTURES)
        check_choice("method", method, METHODS)
        supplied = [n for n, d in (("jvp", jvp), ("vjp", vjp), ("jacobian", jacobian)) if d]
        if len(supplied) > 1:
            raise ValueError(f"Give at most one of jvp=, vjp=, jacobian=; got {supplied}.")
        for step_name, step in (("rel_step", rel_step), ("abs_step", abs_step)):
            if step is not None:
                check_positive(step_name, step, "", "Or pass None for the default step.")
        if fd_dtype is not None and fd_dtype not in _FLOAT_DTYPES:
            raise ValueError(f"fd_dtype must be torch.float32 or torch.float64, got {fd_dtype}.")
        self.fn = fn
        self.structure: Structure = structure
        self.method: Method = method
        self.rel_step = rel_step
        self.abs_step = abs_step
        self.fd_dtype = fd_dtype
        self.jvp = jvp
        self.vjp = vjp
        self.jacobian = jacobian
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.calls = CallCounter()

    def __repr__(self) -> str:
        derivative = next(
            (n for n in ("jvp", "vjp", "jacobian") if getattr(self, n) is not None), self.method
        )
        return (
            f"ExternalFunction({self.name}, structure={self.structure!r}, "
            f"derivative={derivative!r}, calls={self.calls})"
        )

    # ------------------------------------------------------------------------------------------
    # Forward

    def __call__(self, *inputs: Any) -> Any:
        for position, value in enumerate(inputs):
            if isinstance(value, Tensor) and value.is_floating_point():
                if value.dtype not in _FLOAT_DTYPES:
                    raise ExternalFunctionError(
                        f"{self.name}: input {position} has dtype {value.dtype}, which external() "
                        "does not support; cast it with .float() or .double()."
                    )
            elif isinstance(value, Tensor) and value.requires_grad:
                raise ExternalFunctionError(
                    f"{self.name}: input {position} requires grad but has dtype {value.dtype}; "
                    "only float32 and float64 inputs can be differentiated."
                )
        outputs = _ExternalAutogradFunction.apply(self, *inputs)
        return outputs if self._returns_tuple else outputs[0]

    _returns_tuple: bool = False
    _pending: tuple[list[Any], tuple[Array, ...]] = ([], ())

    def _call(self, arrays: Sequence[Any], purpose: str) -> tuple[Array, ...]:
        """Call the wrapped callable and check its outputs."""
        result = self.fn(*arrays)
        self._returns_tuple = isinstance(result, tuple)
        outputs = tuple(np.asarray(r) for r in (result if isinstance(result, tuple) else (result,)))
        for k, output in enumerate(outputs):
            if not (np.issubdtype(output.dtype, np.floating) or np.iscomplexobj(output)):
                raise ExternalFunctionError(
                    f"{self.name} returned output {k} of dtype {output.dtype} during {purpose}; "
                    "it must return floating-point arrays."
                )
            finite = np.isfinite(output)
            if not finite.all():
                first = tuple(int(i) for i in np.argwhere(~finite)[0])
                raise ExternalFunctionError(
                    f"{self.name} returned non-finite values in output {k} during {purpose}: "
                    f"{int((~finite).sum())} of {output.size} entries{_where(first)}. Check the "
                    "inputs are inside the scheme's valid range (a smaller rel_step or "
                    "method='forward' helps when a perturbation leaves it)."
                )
        return outputs

    def _batch_shape(self, outputs: Sequence[Array], inputs: Sequence[Any]) -> tuple[int, ...]:
        """Check the outputs against the declared structure; return the batch shape."""
        if self.structure == "column":
            if any(output.ndim == 0 for output in outputs):
                raise ExternalFunctionError(
                    f"{self.name}: structure='column' needs outputs of shape (..., M), got "
                    f"{[o.shape for o in outputs]}. Return one value per level, or use "
                    "structure='dense'."
                )
            batch = outputs[0].shape[:-1]
            if any(output.shape[:-1] != batch for output in outputs):
                raise ExternalFunctionError(
                    f"{self.name}: structure='column' needs every output to share the column "
                    f"dimensions, got shapes {[o.shape for o in outputs]}."
                )
            for position, value in enumerate(inputs):
                if isinstance(value, Tensor) and value.is_floating_point():
                    self._input_kind(position, tuple(value.shape), batch)
            return tuple(batch)
        if self.structure == "elementwise":
            shapes = [tuple(v.shape) for v in inputs if isinstance(v, Tensor)]
            try:
                batch = tuple(np.broadcast_shapes(*shapes)) if shapes else ()
            except ValueError as error:
                raise ExternalFunctionError(
                    f"{self.name}: structure='elementwise' needs inputs that broadcast together, "
                    f"got shapes {shapes}."
                ) from error
            if any(output.shape != batch for output in outputs):
                raise ExternalFunctionError(
                    f"{self.name}: structure='elementwise' needs outputs of the broadcast input "
                    f"shape {batch}, got {[o.shape for o in outputs]}. Use structure='column' "
                    "or 'dense' if outputs mix elements."
                )
            return batch
        return ()

    def _input_kind(self, position: int, shape: tuple[int, ...], batch: tuple[int, ...]) -> str:
        """For structure='column': 'profile' (..., L) or 'field' (broadcastable to the batch)."""
        try:
            if len(shape) == len(batch) + 1:
                if np.broadcast_shapes(shape[:-1], batch) == batch:
                    return "profile"
            elif len(shape) <= len(batch) and np.broadcast_shapes(shape, batch) == batch:
                return "field"
        except ValueError:
            pass
        raise ExternalFunctionError(
            f"{self.name}: input {position} of shape {shape} does not fit structure='column' "
            f"with column shape {batch}: pass a profile as {(*batch, 'L')}, a shared profile as "
            f"{(*(1 for _ in batch), 'L')}, one value per column as {batch}, or a scalar as ()."
        )

    # ------------------------------------------------------------------------------------------
    # Backward

    def _default_rel_step(self, dtype: np.dtype[Any]) -> float:
        if self.rel_step is not None:
            return self.rel_step
        eps = float(np.finfo(dtype).eps)
        if self.method == "complex":
            return 1e-20
        return eps ** (1 / 3) if self.method == "central" else eps**0.5

    def _steps(self, x: Array) -> Array:
        """Per-element steps, rounded so that ``x + h`` is exactly representable."""
        magnitude = np.abs(x)
        typical = float(magnitude.mean()) if magnitude.size else 0.0
        rel = self._default_rel_step(x.dtype)
        floor = self.abs_step if self.abs_step is not None else rel * (typical or 1.0)
        steps = np.where(magnitude > 0, rel * magnitude, floor).astype(x.dtype)
        if self.method != "complex":
            steps = (x + steps) - x
        return np.asarray(steps)

    def _probes(self, x: Array, batch: tuple[int, ...], position: int) -> Iterator[_Probe]:
        steps = self._steps(x)
        if self.structure == "elementwise":
            yield _Probe(direction=steps, step=np.broadcast_to(steps, batch), index=...)
        elif self.structure == "column":
            if self._input_kind(position, x.shape, batch) == "field":
                yield _Probe(
                    direction=steps, step=np.broadcast_to(steps, batch)[..., None], index=...
                )
                return
            for level in range(x.shape[-1]):
                direction = np.zeros_like(steps)
                direction[..., level] = steps[..., level]
                step = np.broadcast_to(steps[..., level], batch)[..., None]
                yield _Probe(direction=direction, step=step, index=(..., level))
        else:
            for flat in range(x.size):
                direction = np.zeros_like(steps)
                where = np.unravel_index(flat, x.shape)
                direction[where] = steps[where]
                yield _Probe(direction=direction, step=steps[where], index=where)

    def _reduce(self, contraction: Array, probe: _Probe, shape: tuple[int, ...]) -> Array:
        """Turn ``sum_o v_o * dY_o`` (output-shaped) into the gradient entries a probe estimates."""
        if self.structure == "elementwise":
            return _sum_to_shape(contraction, shape)
        if self.structure == "column":
            per_column = contraction.sum(axis=-1)
            target = shape[:-1] if probe.index is not Ellipsis else shape
            return _sum_to_shape(per_column, target)
        return np.asarray(contraction.sum())

    def vector_jacobian_product(
        self,
        inputs: Sequence[Any],
        outputs: Sequence[Array],
        cotangents: Sequence[Array],
        needs_grad: Sequence[bool],
    ) -> list[Array | None]:
        """Gradients of ``sum_o <cotangent_o, output_o>`` with respect to each input.

        Args:
            inputs: The positional inputs as NumPy arrays (non-tensor arguments as given).
            outputs: The forward outputs (used by forward differences).
            cotangents: One array per output, of the output's shape.
            needs_grad: Which inputs need a gradient; the others cost no calls.

        Returns:
            One gradient array (or None) per input.
        """
        self.calls.last_backward = 0
        if self.vjp is not None:
            self.calls.derivative += 1
            result = self.vjp(tuple(inputs), tuple(cotangents))
            result = result if isinstance(result, (tuple, list)) else (result,)
            return [
                np.asarray(g) if (need and g is not None) else None
                for g, need in zip(result, needs_grad)
            ]
        # The cotangents have the outputs' shapes, so they define the batch shape.
        batch = self._batch_shape(cotangents, [_tensor_like(a) for a in inputs])
        if self.jacobian is not None:
            return self._vjp_from_jacobian(inputs, cotangents, needs_grad, batch)
        if self.method == "forward" and self.fd_dtype is not None:
            # The base point must be evaluated in the same dtype as the perturbed calls.
            work = [
                np.asarray(a, dtype=self._work_dtype(a)) if isinstance(a, np.ndarray) else a
                for a in inputs
            ]
            self.calls.backward += 1
            self.calls.last_backward += 1
            outputs = self._call(work, "the backward pass (base point)")
        gradients: list[Array | None] = []
        for position, (x, need) in enumerate(zip(inputs, needs_grad)):
            if not need:
                gradients.append(None)
                continue
            x_work = np.asarray(x, dtype=self._work_dtype(x))
            gradient = np.zeros(x_work.shape, dtype=np.float64)
            for probe in self._probes(x_work, batch, position):
                derivatives = self._directional_derivative(inputs, outputs, position, x_work, probe)
                contraction = sum(
                    np.asarray(v, dtype=np.float64) * d for v, d in zip(cotangents, derivatives)
                )
                gradient[probe.index] += self._reduce(np.asarray(contraction), probe, x.shape)
            gradients.append(gradient)
        return gradients

    def _work_dtype(self, x: Array) -> np.dtype[Any]:
        if self.fd_dtype is not None:
            return np.dtype(torch.empty((), dtype=self.fd_dtype).numpy().dtype)
        return np.asarray(x).dtype

    def _directional_derivative(
        self,
        inputs: Sequence[Any],
        outputs: Sequence[Array],
        position: int,
        x: Array,
        probe: _Probe,
    ) -> list[Array]:
        """``J @ direction / step`` for every output, from one probe."""
        label = f"the backward pass (perturbing input {position})"

        def call_with(value: Array) -> tuple[Array, ...]:
            arguments = list(inputs)
            if self.fd_dtype is not None:
                arguments = [
                    np.asarray(a, dtype=x.dtype) if isinstance(a, np.ndarray) else a
                    for a in arguments
                ]
            arguments[position] = value
            self.calls.backward += 1
            self.calls.last_backward += 1
            return self._call(arguments, label)

        step = probe.step.astype(np.float64)
        if self.jvp is not None:
            tangents: list[Any] = [np.zeros_like(np.asarray(a)) for a in inputs]
            tangents[position] = (probe.direction != 0).astype(x.dtype)
            self.calls.derivative += 1
            result = self.jvp(tuple(inputs), tuple(tangents))
            result = result if isinstance(result, tuple) else (result,)
            return [np.asarray(r, dtype=np.float64) for r in result]
        if self.method == "complex":
            complex_dtype = np.result_type(x.dtype, np.complex64)
            shifted = call_with(x.astype(complex_dtype) + 1j * probe.direction)
            return [np.imag(s).astype(np.float64) / step for s in shifted]
        plus = call_with(x + probe.direction)
        if self.method == "forward":
            return _difference_quotients(plus, outputs, step)
        return _difference_quotients(plus, call_with(x - probe.direction), 2.0 * step)

    def _vjp_from_jacobian(
        self,
        inputs: Sequence[Any],
        cotangents: Sequence[Array],
        needs_grad: Sequence[bool],
        batch: tuple[int, ...],
    ) -> list[Array | None]:
        assert self.jacobian is not None
        self.calls.derivative += 1
        blocks = self.jacobian(*inputs)
        tensor_positions = [i for i, a in enumerate(inputs) if isinstance(a, np.ndarray)]
        if len(cotangents) == 1 and len(tensor_positions) == 1:
            blocks = ((blocks,),)
        gradients: list[Array | None] = [None] * len(inputs)
        for o, v in enumerate(cotangents):
            for j, position in enumerate(tensor_positions):
                block = blocks[o][j]
                if not needs_grad[position] or block is None:
                    continue
                x = np.asarray(inputs[position])
                block = np.asarray(block, dtype=np.float64)
                v64 = np.asarray(v, dtype=np.float64)
                if self.structure == "dense":
                    part = np.tensordot(v64, block, axes=v64.ndim).reshape(x.shape)
                elif self.structure == "elementwise":
                    part = _sum_to_shape(v64 * block, x.shape)
                elif self._input_kind(position, x.shape, batch) == "profile":
                    part = _sum_to_shape(np.einsum("...m,...ml->...l", v64, block), x.shape)
                else:
                    part = _sum_to_shape((v64 * block).sum(axis=-1), x.shape)
                previous = gradients[position]
                gradients[position] = part if previous is None else previous + part
        return [
            g if g is not None or not need else np.zeros(np.shape(inputs[i]))
            for i, (g, need) in enumerate(zip(gradients, needs_grad))
        ]

    # ------------------------------------------------------------------------------------------
    # Forward mode

    def jacobian_vector_product(
        self,
        inputs: Sequence[Any],
        outputs: Sequence[Array],
        tangents: Sequence[Array | None],
    ) -> list[Array]:
        """Directional derivatives ``J v`` of every output along the joint input tangent ``v``.

        Finite differences take one directional difference along ``v`` (all inputs together):
        ``(f(x + t v) - f(x - t v)) / 2t`` (2 calls, whatever the structure and the number of
        inputs; 1 call for forward differences and the complex step). The scalar ``t`` makes the
        largest relative perturbation ``max |t v_k| / |x_k|`` equal ``rel_step`` (elements with
        ``x_k = 0`` use the backward's floor step as their scale), so a tangent along one element
        gets the same step as the backward's probe of that element; with ``structure="column"``
        each column takes its own ``t`` (unless a shared input such as a scalar is perturbed),
        so forward- and reverse-mode Jacobians use identical steps. A user ``jvp`` is called
        once; a user ``jacobian`` is contracted with the tangents.

        Args:
            inputs: The positional inputs as NumPy arrays (non-tensor arguments as given).
            outputs: The forward outputs.
            tangents: One array (the input's shape) or None per input.

        Returns:
            One tangent array per output, of the output's shape (float64).

        Raises:
            NotImplementedError: For an ``ExternalFunction`` built with ``vjp=`` only (it has no
                forward mode; use reverse mode).
        """
        shapes = [np.shape(o) for o in outputs]
        active = [i for i, t in enumerate(tangents) if t is not None and np.any(t != 0)]
        if not active:
            return [np.zeros(shape) for shape in shapes]
        if self.vjp is not None:
            raise NotImplementedError(
                f"{self.name} was built with vjp= only, which gives no forward mode "
                "(Jacobian-vector products); supply jvp= or jacobian=, or use reverse mode."
            )
        if self.jvp is not None:
            full = [
                np.zeros(np.shape(a)) if t is None else np.asarray(t)
                for a, t in zip(inputs, tangents)
            ]
            self.calls.derivative += 1
            result = self.jvp(tuple(inputs), tuple(full))
            result = result if isinstance(result, tuple) else (result,)
            return [np.asarray(r, dtype=np.float64) for r in result]
        batch = self._batch_shape(outputs, [_tensor_like(a) for a in inputs])
        if self.jacobian is not None:
            return self._jvp_from_jacobian(inputs, tangents, active, shapes, batch)
        work = [
            np.asarray(a, dtype=self._work_dtype(a)) if isinstance(a, np.ndarray) else a
            for a in inputs
        ]
        directions = {i: np.asarray(tangents[i], dtype=np.float64) for i in active}
        # Columns are independent, so with structure="column" each column can take its own t
        # (then a tangent along one level gets exactly the backward's step for that element),
        # unless an input shared by several columns (a scalar, say) is perturbed.
        per_column = self.structure == "column" and all(
            np.shape(work[i])[: len(batch)] == batch for i in active
        )
        ratio: Any = np.zeros(batch) if per_column else 0.0
        for i, v in directions.items():
            x = np.asarray(work[i])
            scale = np.abs(x).astype(np.float64)
            typical = float(scale.mean()) if scale.size else 0.0
            rel = self._default_rel_step(x.dtype)
            floor = self.abs_step / rel if self.abs_step is not None else (typical or 1.0)
            relative = np.abs(v) / np.where(scale > 0, scale, floor)
            if per_column:
                if relative.ndim > len(batch):
                    relative = relative.max(axis=-1)
                ratio = np.maximum(ratio, relative)
            else:
                ratio = max(ratio, float(np.max(relative)))
        rel = self._default_rel_step(np.asarray(work[active[0]]).dtype)
        t = rel / np.where(np.asarray(ratio) > 0, ratio, 1.0)

        def scaled(value: Array) -> Array:
            """``t v`` with a per-column ``t`` broadcast over the levels of profile inputs."""
            if per_column and value.ndim > len(batch):
                return value * t[..., None]
            return value * t

        def call_with(sign: complex) -> tuple[Array, ...]:
            arguments = list(work)
            for i, v in directions.items():
                x = np.asarray(work[i])
                if isinstance(sign, complex):
                    x = x.astype(np.result_type(x.dtype, np.complex64))
                arguments[i] = x + np.asarray(sign * scaled(v)).astype(x.dtype)
            self.calls.tangent += 1
            return self._call(arguments, "a forward-mode (Jacobian-vector product) pass")

        step = t[..., None] if per_column else t  # outputs are (..., M)
        if self.method == "complex":
            return [np.imag(s).astype(np.float64) / step for s in call_with(1j)]
        plus = call_with(1.0)
        if self.method == "forward":
            if self.fd_dtype is not None:
                self.calls.tangent += 1
                outputs = self._call(work, "a forward-mode pass (base point)")
            return _difference_quotients(plus, outputs, step)
        return _difference_quotients(plus, call_with(-1.0), 2.0 * step)

    def _jvp_from_jacobian(
        self,
        inputs: Sequence[Any],
        tangents: Sequence[Array | None],
        active: Sequence[int],
        shapes: Sequence[tuple[int, ...]],
        batch: tuple[int, ...],
    ) -> list[Array]:
        assert self.jacobian is not None
        self.calls.derivative += 1
        blocks = self.jacobian(*inputs)
        tensor_positions = [i for i, a in enumerate(inputs) if isinstance(a, np.ndarray)]
        if len(shapes) == 1 and len(tensor_positions) == 1:
            blocks = ((blocks,),)
        result = [np.zeros(shape) for shape in shapes]
        for o, shape in enumerate(shapes):
            for j, position in enumerate(tensor_positions):
                block = blocks[o][j]
                if position not in active or block is None:
                    continue
                v = np.asarray(tangents[position], dtype=np.float64)
                block = np.asarray(block, dtype=np.float64)
                if self.structure == "dense":
                    part = np.tensordot(block, v, axes=v.ndim)
                elif self.structure == "elementwise":
                    part = block * v
                elif self._input_kind(position, v.shape, batch) == "profile":
                    part = np.einsum("...ml,...l->...m", block, v)
                else:
                    part = block * np.asarray(v)[..., None]
                result[o] = result[o] + np.broadcast_to(part, shape)
        return result


def _difference_quotients(
    plus: Sequence[Array], base: Sequence[Array], denominator: Any
) -> list[Array]:
    """``(plus - base) / denominator`` for every output, in float64."""
    return [
        (np.asarray(p, dtype=np.float64) - np.asarray(b, dtype=np.float64)) / denominator
        for p, b in zip(plus, base)
    ]


def _tensor_like(value: Any) -> Any:
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return torch.empty(value.shape, device="meta")
    return value


def _to_numpy(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return value


def _output_dtype_device(inputs: Sequence[Any]) -> tuple[torch.dtype | None, torch.device]:
    """Outputs live on the first tensor's device, in the promoted dtype of the floating inputs."""
    tensors = [v for v in inputs if isinstance(v, Tensor)]
    floating = [v for v in tensors if v.is_floating_point()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = floating[0].dtype if floating else None
    for value in floating[1:]:
        dtype = torch.promote_types(dtype, value.dtype) if dtype else value.dtype
    return dtype, device


def _from_numpy(array: Array, dtype: torch.dtype | None, device: torch.device) -> Tensor:
    """A tensor of ``array`` (sharing its memory where dtype and device allow)."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)


class _ExternalAutogradFunction(torch.autograd.Function):
    """Calls the wrapped NumPy callable forward; its backward is :meth:`vector_jacobian_product`."""

    @staticmethod
    def forward(external: ExternalFunction, *inputs: Any) -> tuple[Tensor, ...]:
        arrays = [_to_numpy(value) for value in inputs]
        external.calls.forward += 1
        outputs = external._call(arrays, "the forward pass")
        external._batch_shape(outputs, inputs)
        # Handed to setup_context for forward mode: under torch.func.jvp the tensors that
        # setup_context and jvp see are wrapped (no storage), while these are plain.
        external._pending = (arrays, outputs)
        dtype, device = _output_dtype_device(inputs)
        return tuple(_from_numpy(output, dtype, device) for output in outputs)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        external, *arguments = inputs
        ctx.external = external
        ctx.positions = [i for i, a in enumerate(arguments) if isinstance(a, Tensor)]
        ctx.constants = [None if isinstance(a, Tensor) else a for a in arguments]
        saved = [arguments[i] for i in ctx.positions]
        ctx.n_inputs = len(saved)
        if external.method == "forward" and external.jvp is None and external.vjp is None:
            saved += list(output)
        ctx.save_for_backward(*saved)
        # (Not cleared here: torch.func runs setup_context more than once per forward.)
        ctx.forward_arrays, outputs = external._pending
        # Only forward differences read the outputs; the others need their shapes alone.
        ctx.forward_outputs = outputs if external.method == "forward" else ()
        ctx.output_meta = [(o.shape, o.dtype, o.device) for o in output]

    @staticmethod
    def jvp(ctx: Any, _external_tangent: Any, *tangents: Tensor | None) -> tuple[Tensor, ...]:
        """Forward mode: :meth:`ExternalFunction.jacobian_vector_product` (2 calls, central)."""
        external: ExternalFunction = ctx.external
        arrays = ctx.forward_arrays
        outputs = ctx.forward_outputs or [
            np.broadcast_to(np.float64(0.0), tuple(shape)) for shape, _, _ in ctx.output_meta
        ]
        if is_transformed(*tangents):
            raise RuntimeError(
                f"{external.name}: forward mode of an external function works with "
                "torch.autograd.forward_ad dual tensors, not inside torch.func.jvp/jacfwd "
                "(NumPy cannot read functorch tensors)."
            )
        directions = [
            None if t is None or not isinstance(a, np.ndarray) else _to_numpy(t)
            for a, t in zip(arrays, tangents)
        ]
        result = external.jacobian_vector_product(arrays, outputs, directions)
        return tuple(
            _from_numpy(r, dtype, device) for r, (_, dtype, device) in zip(result, ctx.output_meta)
        )

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        external: ExternalFunction = ctx.external
        saved = ctx.saved_tensors
        arguments = list(ctx.constants)
        for position, tensor in zip(ctx.positions, saved[: ctx.n_inputs]):
            arguments[position] = tensor
        needs = list(ctx.needs_input_grad[1:])
        if not any(needs):
            return (None, *[None] * len(arguments))
        arrays = [_to_numpy(a) for a in arguments]
        forward_outputs = [_to_numpy(t) for t in saved[ctx.n_inputs :]]
        cotangents = [_to_numpy(g) for g in grad_outputs]
        gradients = external.vector_jacobian_product(arrays, forward_outputs, cotangents, needs)
        result: list[Tensor | None] = [None]
        for argument, gradient in zip(arguments, gradients):
            if gradient is None or not isinstance(argument, Tensor):
                result.append(None)
            else:
                result.append(_from_numpy(gradient, argument.dtype, argument.device))
        return tuple(result)


def external(
    fn: Callable[..., Any],
    *,
    structure: Structure = "dense",
    method: Method = "central",
    rel_step: float | None = None,
    abs_step: float | None = None,
    fd_dtype: torch.dtype | None = None,
    jvp: Callable[..., Any] | None = None,
    vjp: Callable[..., Any] | None = None,
    jacobian: Callable[..., Any] | None = None,
    name: str | None = None,
) -> ExternalFunction:
    """Make a NumPy callable differentiable inside a torch graph.

    Args:
        fn: ``fn(*arrays) -> array | tuple of arrays``. Tensor arguments arrive as NumPy arrays
            on the CPU (in their own dtype); other arguments unchanged. Called on whole batches.
        structure: ``"dense"``, ``"elementwise"`` or ``"column"``: what the Jacobian looks like
            (see the module docstring); it sets how many calls a backward pass makes.
        method: ``"central"`` (default) or ``"forward"`` differences, or ``"complex"`` step
            (``fn`` must accept complex arrays and be real-analytic).
        rel_step: Relative step ``h_k / |x_k|``. Default ``eps**(1/3)`` (central) or
            ``eps**(1/2)`` (forward) of the dtype ``fn`` runs in.
        abs_step: Step used where ``x_k = 0``. Default ``rel_step`` times the mean ``|x|``
            of that input (or ``rel_step`` when the input is all zeros).
        fd_dtype: Run the perturbed calls in this dtype (e.g. ``torch.float64`` for float32
            tensors, when ``fn`` accepts float64); default: the inputs' dtype.
        jvp: ``jvp(primals, tangents) -> output tangents``, exact directional derivatives used in
            place of finite differences (same call pattern and structure).
        vjp: ``vjp(primals, cotangents) -> input cotangents`` (one per positional input, None
            allowed): the whole backward in one call.
        jacobian: ``jacobian(*primals) -> blocks`` with ``blocks[output][input]`` shaped by the
            structure: dense ``(*output.shape, *input.shape)``; elementwise the output shape (the
            diagonal); column ``(..., M, L)`` for profile inputs and ``(..., M)`` for per-column
            or scalar inputs. A single array for one input and one output.
        name: Name used in messages (default: ``fn.__name__``).

    Returns:
        An :class:`ExternalFunction`: call it with tensors; ``.calls`` counts the calls.

    Raises:
        ExternalFunctionError: From calls, when outputs contradict the structure, are not finite
            (the message says which output, where and in which pass), or an input dtype is
            unsupported (float16, bfloat16).
    """
    return ExternalFunction(
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
