"""Bounded-memory discrete adjoints: pnode executes a checkpointing schedule against PETSc's TS.

The ``checkpoint_schedules`` package (Revolve, multistage RAM+disk, two-level, ...) decides which states
to store and when to recompute; this module carries its actions out:

* ``Forward(n0, n1, write_ics, write_adj_deps, storage)``: re-run steps n0..n1 of the recorded step
  sequence (adaptive solves replay their accepted step sizes exactly), storing the state at n0 when
  ``write_ics`` and keeping PETSc's in-memory trajectory of these steps when ``write_adj_deps``;
* ``Reverse(n1, n0)``: run TSAdjoint over those steps, adding each output time's cotangent when the
  adjoint reaches its step;
* ``Copy``/``Move``: restart the forward from a stored state.

Fixed-step solves know their step count up front, so the schedule's forward part runs during the forward
pass.  Adaptive solves learn it only at the end: their forward pass stores nothing but the accepted step
times (a few bytes per step) and the schedule runs in the backward pass, replaying from ``y0``: one extra
forward sweep buys a schedule that needs no step count in advance and memory bounded whatever the number
of steps.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from checkpoint_schedules import (
    Copy,
    EndForward,
    EndReverse,
    Forward,
    Move,
    MultistageCheckpointSchedule,
    Reverse,
    StorageType,
)
from checkpoint_schedules.schedule import CheckpointSchedule

from ._protocols import SegmentDriver
from .errors import InvalidArgumentError

ScheduleFactory = Callable[[int], CheckpointSchedule]


@dataclass(frozen=True)
class CheckpointPolicy:
    """What ``options["checkpoints"]`` asked for: a factory of fresh schedules for ``n`` steps."""

    factory: ScheduleFactory
    description: str

    @classmethod
    def parse(cls, value) -> CheckpointPolicy | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise InvalidArgumentError("options['checkpoints'] must be a count, {'ram': K, 'disk': M} or a schedule "
                                       f"factory, got {value!r}")
        if isinstance(value, int):
            if value < 1:
                raise InvalidArgumentError(f"options['checkpoints'] must be >= 1 (states kept in memory), got {value}")
            return cls(lambda n: MultistageCheckpointSchedule(n, value, 0), f"binomial, {value} in RAM")
        if isinstance(value, dict):
            unknown = set(value) - {"ram", "disk"}
            ram, disk = value.get("ram", 0), value.get("disk", 0)
            if unknown or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (ram, disk)) \
                    or ram + disk < 1:
                raise InvalidArgumentError(
                    "options['checkpoints'] as a dict takes non-negative ints 'ram' and 'disk' with at least one "
                    f"checkpoint in all, e.g. {{'ram': 4, 'disk': 16}}; got {value!r}")
            return cls(lambda n: MultistageCheckpointSchedule(n, ram, disk), f"multistage, {ram} RAM + {disk} disk")
        if isinstance(value, CheckpointSchedule):
            raise InvalidArgumentError(
                "options['checkpoints'] needs a schedule *factory* (a schedule object runs once, a solver many "
                "times): pass e.g. lambda n: HRevolve(n, 4, 8)")
        if callable(value):
            return cls(value, getattr(value, "__name__", "custom schedule"))
        raise InvalidArgumentError(f"options['checkpoints'] must be an int, a dict or a schedule factory, got "
                                   f"{type(value).__name__}")

    def schedule(self, n_steps: int) -> CheckpointSchedule:
        schedule = self.factory(n_steps)
        if not isinstance(schedule, CheckpointSchedule):
            raise InvalidArgumentError(f"the checkpoint schedule factory returned {type(schedule).__name__}, "
                                       "not a checkpoint_schedules.CheckpointSchedule")
        return schedule


def predicted_forward_steps(policy: CheckpointPolicy, n_steps: int) -> int:
    """Forward steps a fresh schedule for ``n_steps`` will take in all (a dry run of its actions)."""
    total = 0
    for action in policy.schedule(n_steps):
        if isinstance(action, Forward):
            total += min(action.n1, n_steps) - action.n0
        elif isinstance(action, EndReverse):
            return total
    return total


class CheckpointStore:
    """States kept by the schedule: numpy copies in RAM, ``.npy`` files in a private temporary folder."""

    def __init__(self):
        self.ram: dict[int, np.ndarray] = {}
        self.disk: dict[int, str] = {}
        self._folder: str | None = None
        self.written = {StorageType.RAM: 0, StorageType.DISK: 0}

    def put(self, n: int, storage: StorageType, state: np.ndarray) -> None:
        if storage == StorageType.DISK:
            if self._folder is None:
                self._folder = tempfile.mkdtemp(prefix="pnode-checkpoints-")
                # files of a forward pass whose backward never runs go when the store is collected
                self._finalizer = weakref.finalize(self, shutil.rmtree, self._folder, True)
            path = os.path.join(self._folder, f"step{n}.npy")
            np.save(path, state)
            self.disk[n] = path
        else:
            self.ram[n] = state.copy()
        self.written[StorageType.DISK if storage == StorageType.DISK else StorageType.RAM] += 1

    def get(self, n: int, storage: StorageType, remove: bool) -> np.ndarray:
        if storage == StorageType.DISK:
            path = self.disk.pop(n) if remove else self.disk[n]
            state = np.load(path)
            if remove:
                os.remove(path)
            return state
        return self.ram.pop(n) if remove else self.ram[n].copy()

    @property
    def held(self) -> int:
        return len(self.ram) + len(self.disk)

    @property
    def folder(self) -> str | None:
        return self._folder

    def clear(self) -> None:
        self.ram.clear()
        self.disk.clear()
        if self._folder is not None:
            self._finalizer()
            self._folder = None


class ScheduleRunner:
    """Carries one schedule's actions out against a driver (a :class:`~pnode._protocols.SegmentDriver`)."""

    def __init__(self, driver: SegmentDriver, policy: CheckpointPolicy, plan: np.ndarray, output_steps: list[int]):
        self.driver = driver
        self.plan = plan
        self.n_steps = len(plan) - 1
        self.output_steps = output_steps
        self.schedule = policy.schedule(self.n_steps)
        self.store = CheckpointStore()
        self.state: np.ndarray | None = None
        self.position = 0
        self.forward_steps = 0
        self.trajectory_steps = 0
        self.forward_done = False
        self.trajectory_token: int | None = None

    # ------------------------------------------------------------------ forward part
    def run_forward(self, y0: np.ndarray, capture: bool) -> None:
        """Execute the schedule up to EndForward, starting from ``y0`` at step 0."""
        self.state = y0.copy()
        self.position = 0
        for action in self.schedule:
            if isinstance(action, EndForward):
                break
            self._execute(action, capture=capture)
        self.forward_done = True

    # ------------------------------------------------------------------ reverse part
    def run_reverse(self, grad_outputs: torch.Tensor) -> None:
        """Execute the schedule to EndReverse; the driver's cost gradient starts at the last output's
        cotangent and ends as dL/dy0."""
        self._grads = grad_outputs.numpy()
        self._next_injection = len(self.output_steps) - 2
        for action in self.schedule:
            if isinstance(action, EndReverse):
                break
            self._execute(action, capture=False)

    # ------------------------------------------------------------------ actions
    def _execute(self, action, capture: bool) -> None:
        stats = self.driver.stats
        if isinstance(action, Forward):
            n0, n1 = action.n0, min(action.n1, self.n_steps)
            if n0 != self.position:
                raise RuntimeError(f"checkpoint schedule asked to advance from step {n0} at step {self.position}")
            if action.write_ics:
                self.store.put(n0, action.storage, self.state)
            self.trajectory_steps = (n1 - n0) if action.write_adj_deps else 0
            self.state = self.driver.replay(self.state, self.plan, n0, n1, keep_trajectory=action.write_adj_deps,
                                            capture=capture)
            self.position = n1
            self.forward_steps += n1 - n0
            if self.forward_done or not capture:
                stats.recomputed_steps += n1 - n0
            stats.peak_stored_states = max(stats.peak_stored_states, self.store.held + self.trajectory_steps)
        elif isinstance(action, Reverse):
            self._reverse(action.n1, action.n0)
        elif isinstance(action, (Copy, Move)):
            self.state = self.store.get(action.n, action.from_storage, remove=isinstance(action, Move))
            self.position = action.n
        else:
            raise RuntimeError(f"unexpected checkpointing action {action!r}")
        stats.checkpoints_ram = self.store.written[StorageType.RAM]
        stats.checkpoints_disk = self.store.written[StorageType.DISK]

    def _reverse(self, n1: int, n0: int) -> None:
        driver = self.driver
        current = n1
        while self._next_injection >= 0 and self.output_steps[self._next_injection] >= n0:
            step = self.output_steps[self._next_injection]
            if step < current:
                driver.adjoint_steps(current - step)
                current = step
            driver.add_to_cost_gradient(self._grads[self._next_injection])
            self._next_injection -= 1
        if current > n0:
            driver.adjoint_steps(current - n0)

    def close(self) -> None:
        self.store.clear()
