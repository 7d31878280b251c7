#!/usr/bin/env bash
# Idempotent set-up of everything pnode needs, on a fresh Debian 12 machine or a cluster login node.
# Each step checks whether it is already done and skips itself; a second run takes seconds.
#   PETSC_DIR/PETSC_ARCH set  -> use that PETSc (module-provided), build only petsc4py against it.
#   otherwise                 -> build PETSc 3.26 + petsc4py from PyPI into .venv (about 14 minutes once;
#                                pip caches the wheel, so later machines reuse it).
#   --docs                    -> also the documentation tools (the ``docs`` extra; ``make docs`` passes it).
set -euo pipefail

WITH_DOCS=0
for arg in "$@"; do
    case "$arg" in
        --docs) WITH_DOCS=1 ;;
        *) echo "[bootstrap] unknown argument $arg (expected --docs)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
VENV=${PNODE_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
TORCH_VERSION=2.13.0
PETSC_SERIES="3.26"
export PETSC_CONFIGURE_OPTIONS=${PETSC_CONFIGURE_OPTIONS:-"--with-cuda=0 --with-x=0 --with-fc=0 --with-debugging=0"}

step() { printf '[bootstrap] %s\n' "$*"; }

# 1. MPI and BLAS from the system (one MPI for PETSc, petsc4py and mpi4py alike).
if ! command -v mpicc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "installing MPICH and OpenBLAS with apt"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq mpich libmpich-dev libopenblas-dev >/dev/null
    else
        echo "[bootstrap] no mpicc found: install an MPI (e.g. 'apt-get install mpich libmpich-dev libopenblas-dev'" \
             "or 'module load openmpi') and run again" >&2
        exit 1
    fi
else
    step "MPI present: $(command -v mpicc)"
fi

# 2. The virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
fi
VPY="$VENV/bin/python"
pip_install() { "$VPY" -m pip install -q "$@"; }
have() { "$VPY" -c "$1" >/dev/null 2>&1; }

# 3. PyTorch, pinned: an unpinned torch pulls a multi-GB CUDA build.
if ! have "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')"; then
    step "installing torch==$TORCH_VERSION (CPU)"
    pip_install "torch==$TORCH_VERSION"
fi

# 4. numpy/cython first: petsc4py's build needs them.
have "import numpy" || pip_install numpy

# 5. PETSc + petsc4py.
if ! have "import petsc4py; petsc4py.init([]); from petsc4py import PETSc"; then
    if [ -n "${PETSC_DIR:-}" ]; then
        # petsc4py must match that PETSc's major.minor version
        header="$PETSC_DIR/include/petscversion.h"
        [ -f "$header" ] || { echo "[bootstrap] PETSC_DIR=$PETSC_DIR has no include/petscversion.h" >&2; exit 1; }
        major=$(awk '/#define PETSC_VERSION_MAJOR/ {print $3}' "$header")
        minor=$(awk '/#define PETSC_VERSION_MINOR/ {print $3}' "$header")
        step "building petsc4py $major.$minor against PETSC_DIR=$PETSC_DIR PETSC_ARCH=${PETSC_ARCH:-}"
        pip_install cython setuptools wheel
        pip_install --no-build-isolation "petsc4py==$major.$minor.*"
    else
        # PETSc first, on its own: petsc4py's isolated build environment then takes PETSc's wheel from
        # pip's cache instead of compiling PETSc a second time.
        step "building PETSc $PETSC_SERIES (about 14 minutes the first time; pip caches the wheel)"
        pip_install "petsc==$PETSC_SERIES.*"
        step "building petsc4py $PETSC_SERIES"
        pip_install "petsc4py==$PETSC_SERIES.*"
    fi
else
    step "petsc4py present"
fi

# 6. mpi4py from source against the same MPI (the binary wheel looks for libmpi.so.12, absent with MPICH).
if ! have "from mpi4py import MPI; MPI.COMM_WORLD.Get_size()"; then
    step "building mpi4py from source"
    pip_install --no-binary mpi4py --force-reinstall --no-deps mpi4py
else
    step "mpi4py present"
fi

# 7. pnode itself, editable, with the extras for tests, benchmarks and plots.
stamp="$VENV/.pnode-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    step "installing pnode (editable) with extras"
    pip_install -e ".[test,plots,benchmarks]"
    touch "$stamp"
else
    step "pnode installed"
fi

# 8. The documentation tools (make docs only), from the ``docs`` extra; skipped once they import and
#    pyproject.toml has not changed since.
if [ "$WITH_DOCS" = 1 ]; then
    docs_stamp="$VENV/.pnode-docs-installed"
    if [ ! -f "$docs_stamp" ] || [ pyproject.toml -nt "$docs_stamp" ] || ! have "import sphinx, myst_parser, furo"; then
        step "installing the documentation tools (pnode[docs])"
        pip_install -e ".[docs]"
        touch "$docs_stamp"
    else
        step "documentation tools installed"
    fi
fi
step "ready: $VPY"
