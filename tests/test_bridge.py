"""Tensor <-> Vec: shared memory for float64, one flattening for tuples, the float32 policy."""

import torch

import pnode
from pnode._bridge import StateLayout, vec_as_tensor
from pnode._petsc import PETSc


def test_vec_and_tensor_share_memory():
    vec = PETSc.Vec().createSeq(5)
    vec.set(1.0)
    view = vec_as_tensor(vec, readonly=False)
    assert view.data_ptr() == vec.getArray(readonly=True).ctypes.data
    view[2] = 7.0
    vec.stateIncrease()
    assert vec.getArray(readonly=True)[2] == 7.0 and vec.sum() == 11.0
    vec.set(3.0)
    assert view[0].item() == 3.0          # PETSc's writes are seen by the tensor: same memory
    readonly = vec_as_tensor(vec)
    assert readonly.data_ptr() == view.data_ptr()
    vec.destroy()


def test_vector_field_receives_petsc_memory_without_copies(monkeypatch):
    """The tensor the vector field sees in a float64 solve is PETSc's input Vec itself (no copy per
    call): record the array address of every Vec PETSc hands to the RHS callback and compare."""
    from pnode._rhs import RHSProblem

    petsc_inputs, seen = [], []
    original = RHSProblem.rhs

    def spying_rhs(self, ts, t, X, F):
        petsc_inputs.append(X.getArray(readonly=True).ctypes.data)
        return original(self, ts, t, X, F)

    monkeypatch.setattr(RHSProblem, "rhs", spying_rhs)

    class Spy(torch.nn.Module):
        def forward(self, t, y):
            seen.append(y.data_ptr())
            return -y

    solver = pnode.ODESolver(Spy(), method="rk4", options={"step_size": 0.1})
    with torch.no_grad():
        solver(torch.ones(4, 3), torch.tensor([0.0, 1.0]))
    assert len(seen) == len(petsc_inputs) == 40
    assert seen == petsc_inputs


def test_tuple_layout_round_trip():
    parts = (torch.randn(2, 3), torch.randn(4))
    layout = StateLayout.of(parts)
    flat = layout.flatten(parts)
    assert flat.shape == (10,) and flat.is_contiguous()
    back = layout.unflatten(flat)
    assert all(torch.equal(a, b) for a, b in zip(parts, back))
    assert back[0].data_ptr() == flat.data_ptr()     # views, not copies


def test_float32_model_policy():
    """float32 state and model: PETSc integrates in float64, the model sees float32 (cast at the
    boundary); results are float32 and agree with the float64 run to float32 rounding."""

    def make(dtype):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)

    seen_dtypes = set()
    f32, f64 = make(torch.float32), make(torch.float64)
    f32.register_forward_pre_hook(lambda m, args: seen_dtypes.add(args[0].dtype))
    func32 = lambda t, y: f32(y)  # noqa: E731
    y0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0, 1, 3)
    y0_32 = y0.float().requires_grad_()
    ys32 = pnode.odeint(func32, y0_32, t.float(), method="rk4", adjoint_params=tuple(f32.parameters()))
    assert ys32.dtype == torch.float32 and seen_dtypes == {torch.float32}
    y0_64 = y0.double().requires_grad_()
    ys64 = pnode.odeint(lambda t, y: f64(y), y0_64, t, method="rk4", adjoint_params=tuple(f64.parameters()))
    assert torch.allclose(ys32.double(), ys64, atol=1e-5)
    g32 = torch.autograd.grad(ys32.sum(), [y0_32, *f32.parameters()])
    g64 = torch.autograd.grad(ys64.sum(), [y0_64, *f64.parameters()])
    for a, b in zip(g32, g64):
        assert a.dtype == torch.float32
        assert torch.allclose(a.double(), b, atol=1e-4, rtol=1e-4)
