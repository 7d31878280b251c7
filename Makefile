# pnode: every target does its own set-up first (idempotent; a finished step is skipped in seconds).
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= outputs
MPIEXEC ?= mpiexec
NP     ?= 2
DEMO_ITERS ?= 4

.PHONY: setup test docs demo demo-spiral demo-serial demo-robertson demo-imex lint bench clean help

help:
	@echo "make test   - set up (if needed) and run the test suite"
	@echo "make demo   - set up (if needed) and train a neural ODE on stiff Robertson kinetics on $(NP) MPI ranks"
	@echo "              (implicit arkimex4, batched Jacobians, L-BFGS on log-rates; progress with the rate errors,"
	@echo "              checkpoints, $(OUT)/robertson_mpi.png)"
	@echo "make demo-robertson - the same task for one trajectory in one process ($(OUT)/robertson.png)"
	@echo "make demo-imex - SINODE-style IMEX training on viscous Burgers (arkimex3), writing $(OUT)/imex_burgers.png"
	@echo "make demo-spiral - the spiral neural ODE (explicit dopri5) on $(NP) MPI ranks through pnode-train"
	@echo "make demo-serial - the spiral trained by examples/spiral.py in one process"
	@echo "make docs   - set up (if needed) and build the documentation site into docs/_build/html"
	@echo "              (warnings are errors; every local link and image is checked)"
	@echo "make lint   - ruff"
	@echo "make bench  - run benchmarks/ (tables written to benchmarks/results/)"

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest tests

# the documentation site: warnings are errors, then every local link and image of the HTML is checked
# (external links are not fetched). -E: a fresh environment each time, so a removed page cannot linger.
DOCS_OUT ?= docs/_build/html
docs:
	@PNODE_VENV=$(VENV) bash scripts/bootstrap.sh --docs
	$(PY) -m sphinx -E -q -W --keep-going -b html docs $(DOCS_OUT)
	$(PY) docs/check_links.py $(DOCS_OUT)

# the main job: data-parallel training of a stiff neural ODE under MPI through the pnode-train driver
demo: setup
	$(MPIEXEC) -n $(NP) $(PY) -m pnode.cli examples/train_robertson.py --iterations $(DEMO_ITERS) --log-every 1 \
		--checkpoint $(OUT)/robertson_mpi.pt --checkpoint-every 1 -- --out $(OUT)

demo-spiral: setup
	$(MPIEXEC) -n $(NP) $(PY) -m pnode.cli examples/train_spiral.py --iterations 400 --log-every 20 \
		--checkpoint $(OUT)/spiral_mpi.pt --checkpoint-every 100 -- --out $(OUT) --report-every 200

demo-serial: setup
	$(PY) examples/spiral.py --out $(OUT)

demo-robertson: setup
	$(PY) examples/robertson.py --out $(OUT)

demo-imex: setup
	$(PY) examples/imex_burgers.py --out $(OUT)

lint: setup
	$(PY) -m ruff check pnode tests examples benchmarks

bench: setup
	$(PY) benchmarks/explicit.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/stiff.py --threads 1
	$(PY) benchmarks/workloads.py --threads 1

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache benchmarks/results docs/_build
