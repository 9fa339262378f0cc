# Quickstart: `make demo` runs the main job, `make test` runs the tests. Each sets itself up.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-python test-cpp bench

setup:
	VENV=$(VENV) bash scripts/setup_env.sh

demo: setup
	$(PY) -m benchmarks.bench_alignment_loss --device cpu

test: setup test-python test-cpp

test-python:
	$(PY) -m pytest python_tests -q -ra

test-cpp:
	bash scripts/build_cpp.sh $(PY)

bench: setup
	$(PY) -m benchmarks.bench_alignment_loss
