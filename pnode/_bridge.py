"""Tensor <-> PETSc Vec conversion: the only module that touches both.

* float64 tensors and Vecs share memory: a callback's input Vec is viewed as tensors without copying,
  and results are written straight into the output Vec's array.  Views are made with numpy (a reshape
  there costs a fraction of a torch view) and handed to torch with ``torch.from_numpy``.
* Tuple states are laid out once (:class:`StateLayout`) in one contiguous float64 vector; the vector
  field sees views of it.
* dtype policy: PETSc computes in float64.  A float32 (or float16/bfloat16) state is integrated in float64
  and the vector field is evaluated in the state's own dtype: each call casts the state to that dtype (a
  copy) and the result back into PETSc's float64 vector.  A float64 state pays no copy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ._petsc import PETSc
from .errors import InvalidArgumentError, ShapeMismatchError

PETSC_DTYPE = torch.float64
_SUPPORTED = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_NUMPY_COPYABLE = (torch.float64, torch.float32, torch.float16)

# torch warns (once per process) that a read-only numpy array gives a writable tensor; pnode only reads
# such views, so spend that one warning here, silenced.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _readonly = np.zeros(1)
    _readonly.flags.writeable = False
    torch.from_numpy(_readonly)


def vec_as_tensor(vec: PETSc.Vec, readonly: bool = True) -> torch.Tensor:
    """A 1-D float64 tensor sharing ``vec``'s local array (no copy).

    Input Vecs of PETSc callbacks are read-locked, so read them with ``readonly=True`` (the tensor is
    then only to be read).  After writing through a tensor, call ``vec.stateIncrease()``: PETSc cannot
    see such writes and would keep cached norms.
    """
    return torch.from_numpy(vec.getArray(readonly=readonly))


def copy_into(target: np.ndarray, source: torch.Tensor, scale: float = 1.0) -> None:
    """target <- scale * source, casting to float64 (numpy's copy where it can: cheaper than torch's)."""
    if source.dtype in _NUMPY_COPYABLE and source.device.type == "cpu":
        values = source.detach().numpy() if source.requires_grad else source.numpy()
        if scale == 1.0:
            np.copyto(target, values.reshape(target.shape))
        else:
            np.multiply(values.reshape(target.shape), scale, out=target)
    else:
        view = torch.from_numpy(target)
        view.copy_(source.detach().reshape(target.shape))
        if scale != 1.0:
            view.mul_(scale)


@dataclass(frozen=True)
class StateLayout:
    """How a (possibly tuple) state maps onto one flat float64 vector."""

    shapes: tuple[torch.Size, ...]
    dtype: torch.dtype
    device: torch.device
    is_tuple: bool
    slices: tuple[tuple[int, int, tuple[int, ...]], ...] = field(init=False, repr=False, compare=False)
    needs_cast: bool = field(init=False, repr=False, compare=False)
    plain: bool = field(init=False, repr=False, compare=False)     # one float64 CPU tensor: no casts, one part

    def __post_init__(self):
        slices, offset = [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            slices.append((offset, offset + size, tuple(shape)))
            offset += size
        object.__setattr__(self, "slices", tuple(slices))
        object.__setattr__(self, "needs_cast", self.dtype != PETSC_DTYPE or self.device.type != "cpu")
        object.__setattr__(self, "plain", not self.is_tuple and not self.needs_cast)

    @property
    def size(self) -> int:
        return self.slices[-1][1]

    @classmethod
    def of(cls, y0: torch.Tensor | Sequence[torch.Tensor], name: str = "y0") -> StateLayout:
        is_tuple = isinstance(y0, (tuple, list))
        parts = tuple(y0) if is_tuple else (y0,)
        if not parts:
            raise InvalidArgumentError(f"{name} is an empty tuple; pass a tensor or a non-empty tuple of tensors")
        for i, p in enumerate(parts):
            where = f"{name}[{i}]" if is_tuple else name
            if not isinstance(p, torch.Tensor):
                raise InvalidArgumentError(f"{where} must be a torch.Tensor, got {type(p).__name__}")
            if p.device.type == "meta":
                raise InvalidArgumentError(
                    f"{where} is on the 'meta' device (shape only, no data); pass a tensor with values, "
                    f"e.g. torch.zeros({tuple(p.shape)})")
            if p.dtype not in _SUPPORTED:
                raise InvalidArgumentError(
                    f"{where} has dtype {p.dtype}; pnode integrates real floating-point states "
                    "(float64 without copies, float32/float16/bfloat16 cast to float64). Convert it, "
                    "e.g. y0.double()")
            if p.dtype != parts[0].dtype or p.device != parts[0].device:
                raise InvalidArgumentError(
                    f"all tensors of {name} must share one dtype and device; {where} has "
                    f"{p.dtype} on {p.device}, {name}[0] has {parts[0].dtype} on {parts[0].device}")
        return cls(tuple(p.shape for p in parts), parts[0].dtype, parts[0].device, is_tuple)

    # --- hot path: PETSc arrays <-> the vector field's tensors ----------------------------------
    def views(self, array: np.ndarray, requires_grad: bool = False, scale: float = 1.0) -> list[torch.Tensor]:
        """The state held in a flat float64 array as tensors in the user's shapes and dtype: views for
        float64 on the CPU, cast copies otherwise.  ``requires_grad`` makes each part an autograd leaf."""
        parts = []
        for lo, hi, shape in self.slices:
            part = torch.from_numpy(array[lo:hi].reshape(shape))
            if self.needs_cast:
                part = part.to(dtype=self.dtype, device=self.device)
            if scale != 1.0:
                part = part * scale
            if requires_grad:
                part = part.detach().requires_grad_()
            parts.append(part)
        return parts

    def pack(self, parts: Sequence[torch.Tensor]):
        """The user-facing state (a tensor, or a tuple for tuple states) from its parts."""
        return tuple(parts) if self.is_tuple else parts[0]

    def write(self, array: np.ndarray, parts: Sequence[torch.Tensor | None], scale: float = 1.0,
              name: str = "func") -> None:
        """Copy ``parts`` (``None`` means zeros) into the flat float64 ``array``, times ``scale``."""
        for i, ((lo, hi, shape), part) in enumerate(zip(self.slices, parts)):
            target = array[lo:hi].reshape(shape)
            if part is None:
                target.fill(0.0)
                continue
            if tuple(part.shape) != shape:
                raise _shape_error(self._where(i, name), part.shape, shape)
            copy_into(target, part, scale)

    def check_output(self, out: object, name: str = "func") -> Sequence[torch.Tensor]:
        """Validate what the vector field returned (type, count and dtype; shapes are checked on write)."""
        if not self.is_tuple:
            if type(out) is torch.Tensor or isinstance(out, torch.Tensor):
                if out.dtype != self.dtype:
                    raise _dtype_error(self._where(0, name), out.dtype, self.dtype)
                return (out,)
            raise InvalidArgumentError(f"{name} must return a torch.Tensor like y0, got {type(out).__name__}")
        if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
            got = type(out).__name__ + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
            raise InvalidArgumentError(f"{name} must return a tuple of {len(self.shapes)} tensors like y0, got {got}")
        for i, p in enumerate(out):
            if not isinstance(p, torch.Tensor):
                raise InvalidArgumentError(f"output {i} of {name} is {type(p).__name__}, expected a tensor")
            if p.dtype != self.dtype:
                raise _dtype_error(self._where(i, name), p.dtype, self.dtype)
        return tuple(out)

    def _where(self, i: int, name: str) -> str:
        return f"output {i} of {name}" if self.is_tuple else f"the output of {name}"

    # --- boundary: user state <-> flat float64 tensors (once per solve) --------------------------
    def flatten(self, state, differentiable: bool = False) -> torch.Tensor:
        """The state as one new flat float64 CPU tensor (keeps the autograd graph if asked)."""
        parts = tuple(state) if self.is_tuple else (state,)
        if not differentiable:
            parts = [p.detach() for p in parts]
        return torch.cat([p.reshape(-1).to("cpu", PETSC_DTYPE) for p in parts])

    def unflatten(self, flat: torch.Tensor):
        """Flat float64 tensors ``(..., size)`` back to the user's layout and dtype (views where possible)."""
        lead = flat.shape[:-1]
        parts = []
        for lo, hi, shape in self.slices:
            part = flat[..., lo:hi].reshape(tuple(lead) + shape)
            if self.needs_cast:
                part = part.to(dtype=self.dtype, device=self.device)
            parts.append(part)
        return self.pack(parts)


@dataclass(frozen=True)
class ParamLayout:
    """How the vector field's parameters map onto the flat parameter-gradient Vec (the columns of the
    parameter Jacobian): one slice per parameter, in order.  The one place that knows the offsets."""

    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]
    slices: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        offsets = np.cumsum([0] + [math.prod(s) for s in self.shapes])
        object.__setattr__(self, "slices", tuple((int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])))

    @classmethod
    def of(cls, params: Sequence[torch.Tensor]) -> ParamLayout:
        return cls(tuple(p.shape for p in params), tuple(p.dtype for p in params))

    @property
    def size(self) -> int:
        return self.slices[-1][1] if self.slices else 0

    def write(self, target: np.ndarray, grads: Sequence[torch.Tensor | None], scale: float = 1.0) -> None:
        """Per-parameter gradients (``None`` = independent: zeros) into the flat float64 ``target``."""
        for (lo, hi), g in zip(self.slices, grads):
            if g is None:
                target[lo:hi] = 0.0
            else:
                copy_into(target[lo:hi], g, scale)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The flat float64 gradient as one tensor per parameter, in its shape and dtype."""
        return [flat[lo:hi].view(shape).to(dtype) for (lo, hi), shape, dtype in zip(self.slices, self.shapes,
                                                                                     self.dtypes)]


def _shape_error(where: str, got, want) -> ShapeMismatchError:
    return ShapeMismatchError(
        f"{where} has shape {tuple(got)} but the state has shape {tuple(want)}; the vector field must "
        "return dy/dt with exactly the shape of y")


def _dtype_error(where: str, got, want) -> ShapeMismatchError:
    return ShapeMismatchError(
        f"{where} has dtype {got} but the state has dtype {want}; make the vector field return the state's "
        f"dtype (e.g. cast its parameters with module.to({want}))")
