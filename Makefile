# Every target creates .venv on a fresh machine and installs what it needs.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Two install levels share the one .venv, each with its stamp: the core dependencies alone (what `make demo`
# needs) and the test extra (every framework and the test tools, what `make test` needs). The test level includes
# the core one, so `make test` after `make demo` only adds to the same .venv.
CORE_STAMP := $(VENV)/.installed-core
STAMP := $(VENV)/.installed-test
# pip byte-compiles what it installs one file at a time; compileall does the same on every core, in half the time.
# Like pip, it passes over the files that are not valid Python 3.11 (templates and other versions' code in some
# packages), which make its exit status 1.
PIP_FLAGS := -q --disable-pip-version-check --no-compile
COMPILE = $(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	>/dev/null || true

.PHONY: install lint test sanitize bench bench-gpu demo reproduce clean

$(CORE_STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e .
	$(COMPILE)
	touch $(CORE_STAMP)

# One pip run installs the test level on a fresh machine (it holds the core level too: both stamps are set).
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e '.[test]'
	$(COMPILE)
	touch $(CORE_STAMP) $(STAMP)

install: $(STAMP)

# ruff (pyflakes, import order, common bugs) and mypy over the package; the configuration is in pyproject.toml
# ([tool.ruff]) and setup.cfg ([mypy]).
lint: $(STAMP)
	$(PY) -m ruff check infoplane cli tests benchmarks examples
	$(PY) -m mypy

# The tests run in PYTEST_WORKERS processes (pytest-xdist; 2 by default, the cores of the CI machine); none of
# them depends on another's order or files.
PYTEST_WORKERS ?= 2
test: lint
	MPLBACKEND=Agg $(PY) -m pytest -q -n $(PYTEST_WORKERS)

# The C kernels built with AddressSanitizer and UndefinedBehaviorSanitizer (a separate cache key), and the tests of
# both kernels run on them. A ctypes-loaded ASan library needs the ASan runtime preloaded; Python's own
# allocations live until exit by design, so leak detection is off. Undefined behaviour aborts the run.
SANITIZE_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
sanitize: $(STAMP)
	INFOPLANE_NATIVE_FLAGS_EXTRA="$(SANITIZE_FLAGS)" CC=gcc LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" \
		ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 MPLBACKEND=Agg \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_binning_kernel.py tests/test_train_fused.py tests/test_native.py \
		tests/test_shuffle.py

# OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE, set on some machines for old OpenBLAS builds, slow numpy's current
# kernels: unset them for the benchmark alone so that the numpy baselines are not handicapped.
bench: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/run.py $(BENCH_ARGS)

# One GPU, under 5 minutes: estimators and a tracked run on CUDA checked against the CPU; writes docs/gpu.md.
# BENCH_ARGS="--device cpu --quick" gives a smoke run without a GPU.
bench-gpu: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/gpu.py $(BENCH_ARGS)

# The main job needs only the core dependencies (torch pinned by constraints.txt, numpy, scipy, scikit-learn,
# matplotlib, tqdm): no framework, no test tool.
demo: $(CORE_STAMP)
	$(PY) -m infoplane.cli.main track examples/tishby_tanh.py --fraction 0.05 --fraction 0.85 \
		--seeds 4 --out runs/demo --overwrite

reproduce: $(STAMP)
	$(PY) benchmarks/reproduce.py

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
