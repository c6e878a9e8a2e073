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

.PHONY: all env test lint typecheck proofs pytest verify bench bench-quick docs clean

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

pytest: $(STAMP)
	$(PY) -m pytest

test: lint typecheck proofs docs pytest bench-quick

# rln-verify with the default profile (dev; RLN_VERIFY_OPTS="--profile ci" for more examples).
RLN_VERIFY_OPTS ?=
verify: $(STAMP)
	$(BIN)/rln-verify $(RLN_VERIFY_OPTS)

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

clean:
	rm -rf $(VENV) .hypothesis .benchmarks site docs/build
