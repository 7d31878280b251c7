"""Tensor <-> PETSc Vec conversion: the only module that touches both.

* float64 tensors and Vecs share memory: a callback's input Vec is viewed as a tensor without copying,
  and results are written straight into the output Vec's array.
* Tuple states are flattened once into one contiguous float64 buffer; the vector field sees views of it.
* dtype policy: PETSc computes in float64.  A float32 (or bfloat16/float16) state is cast to float64 at
  the boundary: the vector field receives a tensor of the state's own dtype (a cast copy per call) and
  its results are cast back.  A float64 state pays no copy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ._petsc import PETSc
from .errors import InvalidArgumentError

PETSC_DTYPE = torch.float64
_SUPPORTED = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

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


@dataclass(frozen=True)
class StateLayout:
    """How a (possibly tuple) state maps onto one flat float64 vector."""

    shapes: tuple[torch.Size, ...]
    dtype: torch.dtype
    device: torch.device
    is_tuple: bool

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @property
    def needs_cast(self) -> bool:
        return self.dtype != PETSC_DTYPE or self.device.type != "cpu"

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

    # --- flat float64 <-> user-facing state -------------------------------------------------------
    def flatten(self, state: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate a state into a new contiguous flat float64 tensor (copies; used at the boundary)."""
        parts = tuple(state) if self.is_tuple else (state,)
        flat = torch.empty(self.size, dtype=PETSC_DTYPE)
        self.write(flat, parts)
        return flat

    def write(self, flat: torch.Tensor, parts: Sequence[torch.Tensor], name: str = "func") -> None:
        """Copy ``parts`` into the flat float64 buffer ``flat`` (casting if needed)."""
        offset = 0
        for i, (p, shape, size) in enumerate(zip(parts, self.shapes, self.sizes)):
            if p.shape != shape:
                where = f"output {i} of {name}" if self.is_tuple else f"the output of {name}"
                raise _shape_error(where, p.shape, shape)
            flat[offset:offset + size].view(shape).copy_(p)
            offset += size

    def unflatten(self, flat: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Views of ``flat`` (leading dimensions kept) in the user's layout, cast to the user's dtype."""
        lead = flat.shape[:-1]
        parts = []
        offset = 0
        for shape, size in zip(self.shapes, self.sizes):
            part = flat[..., offset:offset + size].reshape(*lead, *shape)
            if self.needs_cast:
                part = part.to(dtype=self.dtype, device=self.device)
            parts.append(part)
            offset += size
        return tuple(parts) if self.is_tuple else parts[0]

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Like :meth:`unflatten` but always a list (for iterating over parts)."""
        out = self.unflatten(flat)
        return list(out) if self.is_tuple else [out]

    def check_output(self, out: object, name: str = "func") -> Sequence[torch.Tensor]:
        """Validate what the vector field returned and return it as a sequence of parts."""
        if self.is_tuple:
            if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
                raise InvalidArgumentError(
                    f"{name} must return a tuple of {len(self.shapes)} tensors like y0, got "
                    f"{type(out).__name__}{'' if not isinstance(out, (tuple, list)) else f' of length {len(out)}'}")
            parts = tuple(out)
        else:
            if not isinstance(out, torch.Tensor):
                raise InvalidArgumentError(f"{name} must return a torch.Tensor like y0, got {type(out).__name__}")
            parts = (out,)
        for i, p in enumerate(parts):
            if not isinstance(p, torch.Tensor):
                raise InvalidArgumentError(f"output {i} of {name} is {type(p).__name__}, expected a tensor")
            if p.dtype != self.dtype:
                where = f"output {i} of {name}" if self.is_tuple else f"the output of {name}"
                raise _shape_error(where, p.shape, self.shapes[i], p.dtype, self.dtype)
        return parts


def _shape_error(where: str, got_shape, want_shape, got_dtype=None, want_dtype=None):
    from .errors import ShapeMismatchError

    if got_dtype is not None:
        return ShapeMismatchError(
            f"{where} has dtype {got_dtype} but the state has dtype {want_dtype}; make the vector field "
            f"return the state's dtype (e.g. cast its parameters with module.to({want_dtype}))")
    return ShapeMismatchError(
        f"{where} has shape {tuple(got_shape)} but the state has shape {tuple(want_shape)}; the vector "
        "field must return dy/dt with exactly the shape of y")
