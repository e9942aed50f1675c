# Quick start: `make bench` and `make test`. Both install first (idempotent, quick when
# nothing changed): the pinned dev dependencies, then this package as an editable install
# whose extension (C++ always, CUDA when nvcc is found) is rebuilt incrementally by ninja.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMP := build/.install-stamp
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh') setup.py pyproject.toml requirements-dev.txt
export MAX_JOBS ?= 2

.PHONY: install test test-fast bench bench-full bench-regress lint clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-build-isolation -e .
	$(PYTHON) -c "import fusedmlp; print('fusedmlp', fusedmlp.__version__, 'backends on cpu:', fusedmlp.available_backends('cpu'))"
	@mkdir -p build && touch $(STAMP)

test: install
	$(PYTHON) -m pytest tests

test-fast: install
	$(PYTHON) -m pytest tests -m "not slow"

bench: install
	$(PYTHON) -m fusedmlp.bench

bench-full: install
	$(PYTHON) -m fusedmlp.bench --full --out bench/results/full

bench-regress: install
	$(PYTHON) -m pytest bench -o python_files='bench_*.py' --benchmark-only --benchmark-autosave

lint:
	$(PYTHON) -m ruff check fusedmlp triton_kernels tests bench examples setup.py
	$(PYTHON) -m ruff format --check fusedmlp triton_kernels tests bench examples setup.py

clean:
	rm -rf build fusedmlp/*.so *.egg-info
