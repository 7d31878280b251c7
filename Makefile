# pnode: every target does its own set-up first (idempotent; a finished step is skipped in seconds).
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= outputs
MPIEXEC ?= mpiexec
NP     ?= 2
DEMO_ITERS ?= 400

.PHONY: setup test demo demo-serial demo-robertson lint bench clean help

help:
	@echo "make test   - set up (if needed) and run the test suite"
	@echo "make demo   - set up (if needed) and train the spiral neural ODE on $(NP) MPI ranks, writing $(OUT)/*.png"
	@echo "make demo-serial - the same model trained by examples/spiral.py in one process"
	@echo "make demo-robertson - train a neural ODE on stiff Robertson kinetics (arkimex4 vs dopri5), writing $(OUT)/robertson.png"
	@echo "make lint   - ruff"
	@echo "make bench  - run benchmarks/ (tables written to benchmarks/results/)"

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest tests

# data-parallel training under MPI through the pnode-train driver (progress, checkpoints, plot)
demo: setup
	$(MPIEXEC) -n $(NP) $(PY) -m pnode.cli examples/train_spiral.py --iterations $(DEMO_ITERS) --log-every 20 \
		--checkpoint $(OUT)/spiral_mpi.pt --checkpoint-every 100 -- --out $(OUT) --report-every 200

demo-serial: setup
	$(PY) examples/spiral.py --out $(OUT)

demo-robertson: setup
	$(PY) examples/robertson.py --out $(OUT)

lint: setup
	$(PY) -m ruff check pnode tests examples benchmarks

bench: setup
	$(PY) benchmarks/explicit.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/stiff.py --threads 1

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache benchmarks/results
