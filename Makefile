# pnode: every target does its own set-up first (idempotent; a finished step is skipped in seconds).
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= outputs

.PHONY: setup test demo demo-spiral lint bench clean help

help:
	@echo "make test   - set up (if needed) and run the test suite"
	@echo "make demo   - set up (if needed) and train a neural ODE on stiff Robertson kinetics (implicit"
	@echo "              arkimex4 vs explicit dopri5), writing $(OUT)/robertson.png"
	@echo "make demo-spiral - the explicit spiral neural ODE demo, writing $(OUT)/spiral.png"
	@echo "make lint   - ruff"
	@echo "make bench  - run benchmarks/ (tables written to benchmarks/results/)"

setup:
	@bash scripts/bootstrap.sh

test: setup
	$(PY) -m pytest tests

demo: setup
	$(PY) examples/robertson.py --out $(OUT)

demo-spiral: setup
	$(PY) examples/spiral.py --out $(OUT)

lint: setup
	$(PY) -m ruff check pnode tests examples benchmarks

bench: setup
	$(PY) benchmarks/explicit.py
	$(PY) benchmarks/stiff.py

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache benchmarks/results
