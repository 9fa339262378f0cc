# Quickstart: `make demo` runs the main job, `make test` runs the tests. Each sets itself up.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-python test-cpp bench mutation

setup:
	VENV=$(VENV) bash scripts/setup_env.sh

demo: setup
	$(PY) -m gfcore demo

test: setup test-python test-cpp

# $(VENV)/bin/pytest, not `python -m pytest`: the latter puts the checkout on sys.path and the
# tests would import its gfcore/ (without the compiled extension) instead of the installed one.
test-python:
	$(VENV)/bin/pytest python_tests -q -ra

test-cpp:
	bash scripts/build_cpp.sh $(PY)

bench: setup
	$(PY) -m benchmarks.bench_alignment_loss

# Mutation testing (mutmut, from requirements-dev.txt) of the core modules, one at a time:
# writes benchmarks/results/mutation.md. `make mutation MUTATE="losses train/optim.py"` runs a few.
mutation: setup
	$(PY) scripts/mutation.py $(MUTATE)
