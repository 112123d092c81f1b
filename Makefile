# cupyfused: `make test` and `make bench` each run their own set-up (.ci/setup: idempotent, installs only
# what is missing, so both also work offline where torch and CuPy are already installed).
PYTHON ?= python3
PYTEST_ARGS ?=
BENCH_ARGS ?=
BENCH_JSON ?= out/bench.json
# Set NO_TESTS_OK=1 to turn pytest's "no tests collected" (exit 5) into success (.ci/run does).
NO_TESTS_OK ?=

export PYTHON

.PHONY: setup test bench check info lint gpu wheel clean

setup:
	@bash .ci/setup

test: setup
	@$(PYTHON) -m pytest $(PYTEST_ARGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ] && [ -n "$(NO_TESTS_OK)" ]; then echo "pytest: no tests were collected (exit 5)"; exit 0; fi; \
	exit $$rc

bench: setup
	$(PYTHON) -m cupyfused bench --json $(BENCH_JSON) $(BENCH_ARGS)

check: setup
	$(PYTHON) -m cupyfused check

info:
	$(PYTHON) -m cupyfused info

lint:
	@$(PYTHON) -m ruff --version >/dev/null 2>&1 || $(PYTHON) -m pip install -q ruff
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# The whole GPU-machine run (info, GPU tests, benchmark) in one command; outputs under $$OUT (default ./out).
gpu:
	bash bench/gpu_run.sh

wheel:
	$(PYTHON) -m pip wheel --no-deps --no-build-isolation -w dist .

clean:
	rm -rf build dist out *.egg-info .pytest_cache .ruff_cache
