# Two commands do everything on a fresh machine:
#   make verify   the stability report (the main job)
#   make test     static checks, proof scripts, the test suite and the quick benchmark gate
# Both create or reuse $(VENV). torch is installed only when the interpreter has none:
# torch==2.13.0 (the CPU wheel on this machine's disk), never an unpinned CUDA build.
# An interpreter that already has torch keeps it (the venv then sees the system site-packages).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.rln-installed
TORCH_PIN ?= torch==2.13.0
export HYPOTHESIS_PROFILE ?= $(if $(CI),ci,dev)

.PHONY: all env test lint typecheck proofs pytest sanitize verify verify-thorough bench bench-quick docs clean \
  robustness robustness-quick

all: test

$(STAMP): pyproject.toml
	@if [ ! -x "$(PY)" ]; then \
	  if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	    echo "[env] $(PYTHON) has torch; the venv reuses it"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	@if $(PY) -c "import torch" >/dev/null 2>&1; then \
	  echo "[env] keeping torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
	  echo "[env] no torch: installing $(TORCH_PIN) (CPU wheel)"; \
	  $(PY) -m pip install --disable-pip-version-check -q "$(TORCH_PIN)"; \
	fi
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
	@touch $(STAMP)

env: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check rln_verified tests benchmarks proofs docs

typecheck: $(STAMP)
	$(BIN)/mypy rln_verified

proofs: $(STAMP)
	@set -e; for f in proofs/*.py; do echo "[proof] $$f"; $(PY) $$f; done

# Where a C compiler exists the C kernels must build and be in use: under RLN_VERIFIED_REQUIRE_NATIVE=1 a
# kernel that fails to build or load raises instead of falling back to the eager path (rln_verified/_native/toolchain.py).
NATIVE_CC := $(shell command -v "$${CC:-cc}" || command -v gcc || command -v clang)
pytest sanitize: export RLN_VERIFIED_REQUIRE_NATIVE ?= $(if $(NATIVE_CC),1,0)

# -n 2: pytest-xdist over two processes (a crashed worker's test is reported failed and the worker restarted). The
# transform matrix's page, docs/transforms.md, is then generated from the cells' recorded outcomes.
# Hypothesis draws new cases per commit: the seed is the commit hash's first 8 hex digits (printed in the header);
# `make pytest HYPOTHESIS_SEED=N` replays a run. Failing examples it finds are pinned as @example.
HYPOTHESIS_SEED ?= $(shell h=$$(git rev-parse --short=8 HEAD 2>/dev/null) && printf "%d" "0x$$h")
SEED_OPT = $(if $(HYPOTHESIS_SEED),--hypothesis-seed=$(HYPOTHESIS_SEED))

pytest: $(STAMP)
	$(PY) -m pytest -n 2 $(SEED_OPT); rc=$$?; $(PY) docs/gen_transforms.py || rc=1; exit $$rc

test: lint typecheck proofs docs pytest sanitize bench-quick

# The C kernels under AddressSanitizer and UBSan. RLN_VERIFIED_SANITIZE=1 rebuilds them with
# -fsanitize=address,undefined (cached apart from the normal build); Python runs with the ASan runtime preloaded, and
# libstdc++ with it, so that ASan can intercept the C++ exceptions torch throws. Any finding aborts the run (and
# xdist reports the worker's test as failed); --capture=sys leaves file descriptor 2 alone, so the report shows. The
# selection: the tests that run kernel code (the kernels' own tests, the fused layers, the custom ops, the float32
# layer claims, and the transform cells that reach C: eager, autocast, jit.trace), less those whose time goes to
# float64 or plain-torch second-order work that never enters C. About 1.5 min of CPU time. Without a compiler there
# is no kernel to check; a compiler without libasan fails with what to install.
SANITIZE_TESTS ?= tests/test_native.py tests/test_native_build.py tests/test_gaussian.py tests/test_bayesian_linear.py \
  tests/test_norm.py $(wildcard tests/test_norm_ops.py tests/test_bayes_ops.py tests/test_transforms.py)
SANITIZE_SELECT ?= (native or std_exp or fused or norm_ops or bayes_ops or (transforms and (eager or autocast or \
  jit_trace)) or (claims and float32 and not eager)) and not (second_order or second_derivative or gradcheck or \
  func_transforms)
SANITIZE_OPTS = ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  RLN_VERIFIED_SANITIZE=1 RLN_TRANSFORMS_RESULTS=build/transforms-sanitize

sanitize: $(STAMP)
	@if [ -z "$(NATIVE_CC)" ]; then \
	  if [ "$$RLN_VERIFIED_REQUIRE_NATIVE" = 1 ]; then \
	    echo "[sanitize] no C compiler, but RLN_VERIFIED_REQUIRE_NATIVE=1 demands the C kernels"; exit 1; fi; \
	  echo "[sanitize] no C compiler: no C kernel to check"; exit 0; fi; \
	asan=$$("$(NATIVE_CC)" -print-file-name=libasan.so); \
	if [ "$${asan#/}" = "$$asan" ] || [ ! -e "$$asan" ]; then \
	  echo "[sanitize] $(NATIVE_CC) has no AddressSanitizer runtime (libasan.so): install gcc's (Debian/Ubuntu:" \
	    "libasan8, which the gcc package pulls in), or point CC at a gcc that has it"; exit 1; fi; \
	cxx=$$("$(NATIVE_CC)" -print-file-name=libstdc++.so.6); \
	echo "[sanitize] LD_PRELOAD=$$asan $$cxx"; \
	LD_PRELOAD="$$asan $$cxx" $(SANITIZE_OPTS) $(PY) -m pytest -q -n 2 --capture=sys $(SANITIZE_TESTS) \
	  -k "$(SANITIZE_SELECT)"

# rln-verify with the default profile (dev; RLN_VERIFY_OPTS="--profile ci" for more examples).
RLN_VERIFY_OPTS ?=
verify: $(STAMP)
	$(BIN)/rln-verify $(RLN_VERIFY_OPTS)

# The thorough profile (10x ci's examples) over every claim, and the claim-marked tests with it. Run it before
# resolving an issue that touches a kernel; its summary goes in the closing note.
verify-thorough: $(STAMP)
	$(BIN)/rln-verify --profile thorough $(if $(HYPOTHESIS_SEED),--seed $(HYPOTHESIS_SEED))
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -n 2 -q -m claim $(SEED_OPT) -p no:randomly

# The site: docs/gen_site.py assembles docs/build/src, mkdocs builds docs/build/site (strict: a broken
# link or a page missing from the nav fails).
docs: $(STAMP)
	$(PY) docs/gen_site.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q -f docs/mkdocs.yml

BENCH_DIR ?= .benchmarks
BENCH_COMMON = -q -p no:randomly --benchmark-only --benchmark-disable-gc --benchmark-warmup=on
# Windows: passes over the suite, the gate takes each pair's median over them (benchmarks/README.md).
BENCH_FULL_OPTS ?= --benchmark-min-rounds=8 --benchmark-max-time=0.1 --benchmark-warmup-iterations=2
BENCH_FULL_WINDOWS ?= 9
BENCH_QUICK_OPTS ?= --benchmark-min-rounds=3 --benchmark-max-time=0.02 --benchmark-warmup-iterations=1
BENCH_QUICK_WINDOWS ?= 5
# glibc returns freed blocks to the OS and re-faults them on the next allocation, which in this VM costs
# more than the arithmetic; the same setting applies to baseline and contender (benchmarks/README.md).
BENCH_ENV = MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_MMAP_THRESHOLD_=1000000000

bench: $(STAMP)
	@mkdir -p $(BENCH_DIR)
	$(BENCH_ENV) RLN_BENCH_WINDOWS=$(BENCH_FULL_WINDOWS) $(PY) -m pytest benchmarks $(BENCH_COMMON) $(BENCH_FULL_OPTS) --benchmark-json=$(BENCH_DIR)/full.json
	$(PY) -m rln_verified.bench $(BENCH_DIR)/full.json

bench-quick: $(STAMP)
	@mkdir -p $(BENCH_DIR)
	$(BENCH_ENV) RLN_BENCH_WINDOWS=$(BENCH_QUICK_WINDOWS) $(PY) -m pytest benchmarks $(BENCH_COMMON) $(BENCH_QUICK_OPTS) --benchmark-json=$(BENCH_DIR)/quick.json
	$(PY) -m rln_verified.bench $(BENCH_DIR)/quick.json --margin quick

# The robustness and uncertainty study (docs/robustness.md): the full mode (10 seeds per cell, under 30 min
# on 2 cores) writes benchmarks/robustness/results.json, and the page and its plots are made from it. The quick mode
# (under 60 s) also runs in `make test`, as tests/test_robustness.py::test_robustness_quick_end_to_end.
robustness: $(STAMP)
	$(PY) -m benchmarks.robustness.study --mode full --out benchmarks/robustness/results.json
	$(PY) -m benchmarks.robustness.report benchmarks/robustness/results.json --md docs/robustness.md

robustness-quick: $(STAMP)
	$(PY) -m benchmarks.robustness.study --mode quick --out build/robustness-quick.json
	$(PY) -m benchmarks.robustness.report build/robustness-quick.json --md build/robustness-quick/robustness.md

# Mutation testing (tests/mutation/README.md): the scripted mutants, each patch applied alone to a scratch
# copy of the tree, then mutmut over the Python kernels. Not part of `make test` (14-24 min for the scripted set on
# this machine); exits 1 when a kernel module kills fewer than 90% of its non-equivalent mutants.
# mutmut: 14 min for _special.py to about 2.5 hours for the norm module, at most MUTMUT_OPTS="--limit S" seconds
# (default 3600) per module; --recheck continues a stopped run (tests/mutation/README.md).
# MUTATION_OPTS="--only i17-" runs a subset; MUTMUT_MODULES= (empty) skips mutmut.
MUTATION_OPTS ?=
MUTMUT_MODULES ?= special gaussian norm bayesian_linear
MUTMUT_OPTS ?=
.PHONY: mutation
mutation: $(STAMP)
	@$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install --disable-pip-version-check -q -e ".[mutation]"
	$(PY) tests/mutation/run_scripted.py $(MUTATION_OPTS); rc=$$?; \
	if [ -n "$(strip $(MUTMUT_MODULES))" ]; then $(PY) tests/mutation/run_mutmut.py $(MUTMUT_MODULES) $(MUTMUT_OPTS) || rc=1; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) .hypothesis .benchmarks site docs/build
