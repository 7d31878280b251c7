import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))   # tests/oracles.py

torch.set_default_dtype(torch.float64)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Run every test in its own directory, so a stray PETSc TS-data-* folder would be noticed."""
    monkeypatch.chdir(tmp_path)
    yield
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("TS-data")]
    assert not leftovers, f"PETSc left trajectory files behind: {leftovers}"


class MLP(torch.nn.Module):
    """A small non-autonomous vector field: time enters, so dL/dt and time handling are exercised."""

    def __init__(self, dim=3, width=16, seed=0, weight_scale=0.5, bias_scale=0.1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(dim + 1, width, generator=g) * weight_scale)
        self.b1 = torch.nn.Parameter(torch.randn(width, generator=g) * bias_scale)
        self.w2 = torch.nn.Parameter(torch.randn(width, dim, generator=g) * weight_scale)

    def forward(self, t, y):
        ty = torch.cat([y, t.expand(*y.shape[:-1], 1)], dim=-1)
        return torch.tanh(ty @ self.w1 + self.b1) @ self.w2


@pytest.fixture
def mlp():
    return MLP()
