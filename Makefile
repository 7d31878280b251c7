# pnode: every target does its own set-up first (idempotent; a finished step is skipped in seconds).
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= outputs

.PHONY: setup test demo lint bench clean help

help:
	@echo "make test   - set up (if needed) and run the test suite"
	@echo "make demo   - set up (if needed) and train the demo neural ODE, writing $(OUT)/*.png"
	@echo "make lint   - ruff"
	@echo "make bench  - run benchmarks/ (tables written to benchmarks/results/)"

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest tests

demo: setup
	$(PY) examples/spiral.py --out $(OUT)

lint: setup
	$(PY) -m ruff check pnode tests examples benchmarks

bench: setup
	$(PY) benchmarks/explicit.py
	$(PY) benchmarks/memory.py

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache benchmarks/results
