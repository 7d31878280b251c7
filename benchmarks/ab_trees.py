"""A/B timing of two pnode checkouts (e.g. before and after a refactor), alternating in one run.

    python benchmarks/ab_trees.py OLD_TREE NEW_TREE [--rounds 3]

Each round runs, for each tree (PYTHONPATH selects it), one training step (forward + backward) of three
problems in a fresh process: an MLP field with rk4 (B=512, D=32, 100 steps), a tiny 2-50-2 field (B=16,
100 steps), and Robertson kinetics with learnable log-rates (arkimex4, batched Jacobians, B=4); the best
round's median per tree counts, and new/old is printed with the load average.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r'''
import json
import sys

import torch
from _common import time_steps   # benchmarks/ is put on the path by the parent

import pnode

# the tree under test must be the one imported (a stray checkout on sys.path would make A equal B)
assert pnode.__file__.startswith(sys.argv[3]), (pnode.__file__, sys.argv[3])
torch.set_num_threads(1)
torch.manual_seed(0)
which, repeats = sys.argv[1], int(sys.argv[2])
dtype = torch.float64
if which in ("explicit", "spiral"):
    sizes = (32, 128, 128, 32) if which == "explicit" else (2, 50, 2)
    layers = []
    for i in range(len(sizes) - 1):
        layers += [torch.nn.Linear(sizes[i], sizes[i + 1]), torch.nn.Tanh()]
    net = torch.nn.Sequential(*layers[:-1]).double()
    y0 = torch.randn(512 if which == "explicit" else 16, sizes[0], dtype=dtype)
    t = torch.tensor([0.0, 1.0], dtype=dtype) if which == "explicit" else torch.linspace(0, 1, 10, dtype=dtype)
    solver = pnode.ODESolver(lambda t, y: net(y), method="rk4", options={"step_size": 0.01},
                             adjoint_params=tuple(net.parameters()))
else:
    k = torch.nn.Parameter(torch.log(torch.tensor([0.04, 3e7, 1e4], dtype=dtype)))

    def robertson(t, y):
        r = torch.exp(k)
        a, b, c = y[..., 0], y[..., 1], y[..., 2]
        return torch.stack([-r[0] * a + r[2] * b * c, r[0] * a - r[2] * b * c - r[1] * b * b, r[1] * b * b], -1)

    y0 = torch.tensor([[1.0, 0.0, 0.0]] * 4, dtype=dtype)
    t = torch.logspace(-5, 0, 12, dtype=dtype)
    t[0] = 0
    solver = pnode.ODESolver(robertson, method="arkimex4", rtol=1e-6, atol=1e-10,
                             options={"jacobian": "batched"}, adjoint_params=(k,))


def step():
    solver(y0, t).pow(2).sum().backward()


median, _ = time_steps(step, warmup=1, repeats=repeats)
print(json.dumps(median))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    res = {}
    for _ in range(args.rounds):
        for tree in (args.old, args.new):
            for which, n in (("explicit", 3), ("spiral", 10), ("stiff", 3)):
                path = os.pathsep.join([tree, os.path.dirname(os.path.abspath(__file__))])
                # cwd: a neutral folder (``python -c`` puts the cwd first on sys.path, ahead of PYTHONPATH)
                out = subprocess.run([sys.executable, "-c", CHILD, which, str(n), os.path.abspath(tree)],
                                     env=dict(os.environ, PYTHONPATH=path), capture_output=True, text=True,
                                     cwd=tempfile.gettempdir())
                res.setdefault((which, tree), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("load average", os.getloadavg())
    for which in ("explicit", "spiral", "stiff"):
        old, new = min(res[(which, args.old)]), min(res[(which, args.new)])
        print(f"{which:9s} old {old:.4f}s new {new:.4f}s new/old {new / old:.3f}")


if __name__ == "__main__":
    main()
