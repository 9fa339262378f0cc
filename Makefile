# Quickstart: `make demo` runs the main job, `make test` runs the tests. Each sets itself up.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-torch-min demo docs docs-check test test-python test-python-torch-min test-cpp test-kernels test-kernel-mutations bench mutation

setup:
	VENV=$(VENV) bash scripts/setup_env.sh

# The installed console script, not `python -m gfcore`: the latter puts the checkout first on
# sys.path and would import its gfcore/ without the compiled kernels (see test-python below).
demo: setup
	$(VENV)/bin/gfcore demo

test: setup test-kernels test-python test-cpp test-python-torch-min docs

# `make test` (and so CI) fails the CUDA build if any kernel spills registers to local memory
# (setup.py: ptxas -warn-spills -Werror). GFCORE_FAIL_ON_SPILLS=0 make test turns it off.
test: export GFCORE_FAIL_ON_SPILLS ?= 1

# The CUDA kernel sources run on the CPU (cpp_tests/simt + cpp_tests/kernels): g++ with ASan and
# UBSan, every case under six thread schedules. Needs only a C++17 compiler; `setup` is a
# prerequisite so that `make test-kernels` alone sets up the same way as `make test`.
test-kernels: setup
	$(MAKE) -C cpp_tests/kernels run JOBS=2

# Plants deliberate bugs in a copy of csrc/ and checks that the harness catches every one
# (writes benchmarks/results/kernel_mutations.md). About half an hour on 2 cores.
test-kernel-mutations:
	$(MAKE) -C cpp_tests/kernels -j2
	python3 scripts/kernel_mutations.py

# $(VENV)/bin/pytest, not `python -m pytest`: the latter puts the checkout on sys.path and the
# tests would import its gfcore/ (without the compiled extension) instead of the installed one.
test-python:
	$(VENV)/bin/pytest python_tests -q -ra

test-cpp:
	bash scripts/build_cpp.sh $(PY)

# The Python tests again against the oldest supported torch (gfcore/torch_support.py: MINIMUM),
# in a second environment with gfcore's CPU kernels (the CUDA build and the kernel harness run
# once, above, against the pinned torch). PyPI's torch 2.11 is a CUDA build: about 4.6 GB.
TORCH_MIN ?= 2.11.0
VENV_TORCH_MIN ?= .venv-torch-min
setup-torch-min:
	VENV=$(VENV_TORCH_MIN) TORCH_VERSION=$(TORCH_MIN) GFCORE_CUDA=0 GFCORE_BUILD_DIR=build/torch-min \
	  bash scripts/setup_env.sh

test-python-torch-min: setup-torch-min
	$(VENV_TORCH_MIN)/bin/pytest python_tests -q -ra

bench: setup
	$(PY) -m benchmarks.bench_alignment_loss

# Mutation testing (mutmut, from requirements-dev.txt) of the core modules, one at a time:
# writes benchmarks/results/mutation.md. `make mutation MUTATE="losses train/optim.py"` runs a few.
mutation: setup
	$(PY) scripts/mutation.py $(MUTATE)

# The documentation site (docs/, mkdocs.yml): MkDocs Material + mkdocstrings from the pinned
# requirements-docs.txt in their own .venv-docs, built into site/ with --strict (a broken link,
# anchor or API reference fails); part of `make test`, so CI builds the site. The docs' python
# blocks are run by python_tests/test_docs.py (so by `make test-python`).
VENV_DOCS ?= .venv-docs
$(VENV_DOCS)/.installed: requirements-docs.txt
	python3 -m venv $(VENV_DOCS)
	$(VENV_DOCS)/bin/pip install -q -r requirements-docs.txt
	touch $@

docs: $(VENV_DOCS)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV_DOCS)/bin/mkdocs build --strict

# The built site in a real browser: serves site/, opens the home, drop-in, results, demo and mutation pages in
# headless Chromium (Debian's `chromium`; CHROMIUM=/path overrides), saves screenshots under
# site/_checks/ and fails on console errors, failed requests or images that do not load.
docs-check: docs
	python3 scripts/docs_check.py site
