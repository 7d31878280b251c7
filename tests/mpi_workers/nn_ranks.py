"""Worker for tests/test_nn.py: an ODEBlock and CNFs (exact trace; Hutchinson with adaptive steps) on one
global batch sharded over however many ranks run this script; rank 0 writes the gathered outputs and the
gradients of the global mean loss to ``sys.argv[1]`` (.npz).  The 1-rank run is the oracle.

    mpiexec -n P python nn_ranks.py out.npz
"""

import sys

import numpy as np
import torch
from mpi4py import MPI

from pnode.distributed import shard
from pnode.nn import CNF, ODEBlock, sample_noise

torch.set_default_dtype(torch.float64)
BATCH = 7                                  # uneven shards on 2 ranks (4 + 3)


class Field(torch.nn.Module):
    def __init__(self, dim=2, width=10):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(dim + 1, width, generator=g) * 0.6)
        self.w2 = torch.nn.Parameter(torch.randn(width, dim, generator=g) * 0.6)

    def forward(self, t, z):
        return torch.tanh(torch.cat([z, t.expand(len(z), 1)], dim=1) @ self.w1) @ self.w2


def main(path):
    comm = MPI.COMM_WORLD
    x = torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(1))
    noise = sample_noise(x.shape, "rademacher", generator=torch.Generator().manual_seed(2))
    results = {}
    cases = {
        "odeblock": lambda f: ODEBlock(f, method="rk4", options={"step_size": 0.1}, comm=comm),
        "cnf_exact": lambda f: CNF(f, regularization=("kinetic_energy",), method="rk4", options={"step_size": 0.125},
                                   comm=comm),
        "cnf_hutchinson_dopri5": lambda f: CNF(f, trace="hutchinson", regularization=("jacobian_frobenius",),
                                               rtol=1e-6, atol=1e-8, comm=comm),
    }
    for name, build in cases.items():
        field = Field()
        module = build(field)
        if name == "odeblock":
            out = module(shard(x, comm))
            local_loss, value = out.pow(2).sum() / BATCH, out
        else:
            result = module(shard(x, comm), noise=shard(noise, comm))
            reg = next(iter(result.regularization.values()))
            local_loss = (-result.log_prob.sum() + 0.1 * reg.sum()) / BATCH
            value = result.log_prob
        local_loss.backward()                  # pnode sums the parameter gradients over the ranks
        gathered = comm.gather(value.detach().numpy())
        if comm.Get_rank() == 0:
            results[f"{name}_value"] = np.concatenate(gathered)
            for pname, p in field.named_parameters():
                results[f"{name}_grad_{pname}"] = p.grad.numpy().copy()
            results[f"{name}_steps"] = np.array(module.stats.steps)
    if comm.Get_rank() == 0:
        np.savez(path, **results)


if __name__ == "__main__":
    main(sys.argv[1])
