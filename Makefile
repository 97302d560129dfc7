# rankserve: two commands on a fresh machine.
#   make serve   set up .venv, build demo data + models on first run, start Triton + Ray Serve on :8000
#   make test    set up .venv, lint (ruff, mypy), build demo data + models on first run, run the test suite
# Beside it, the cases too heavy for every change (pyproject's pytest markers):
#   make slow-test     heavy load, chaos and long cases (marked slow; make test runs a small version of each)
#   make cluster-test  a real two-node Ray cluster on this machine (marked cluster)
# GPU evidence in one device call (benchmarks/gpu/check.py):
#   make gpu-check-prepare              here: wheels for the bare device image into .whl/, prints the device call
#   make gpu-check                      on the device machine (python3 of the image, no venv): the check itself
#   make gpu-check ARGS=--dry-run       here: the same script, every GPU step skipped and saying so
PYTHON ?= python3
VENV   ?= .venv
EXTRA  ?= cpu
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(EXTRA)
# the GPU check runs where it is: the venv's python here, the image's python3 on a device machine
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))

.PHONY: serve test slow-test cluster-test install build bench capacity chaos freshness scenario-freshness kernel-bench import-bench quality-bench loop-bench loadtest lint clean \
        gpu-check gpu-check-prepare

# pyproject's requires-python (>=3.10,<3.14), checked before a venv is made from $(PYTHON)
PYTHON_OK := import sys; ok = (3, 10) <= sys.version_info[:2] < (3, 14); v = "%d.%d.%d" % sys.version_info[:3]; \
	ok or sys.stderr.write("rankserve runs on Python 3.10 to 3.13; $(PYTHON) is Python " + v + \
	". Pick another: make serve PYTHON=python3.13\n"); sys.exit(0 if ok else 1)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -c '$(PYTHON_OK)'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# One resolve for everything: protobuf / grpcio-reflection pins only hold when solved together.
	$(PY) -m pip install -q -e ".[$(EXTRA),dev]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

build: install
	@$(PY) -m serving.cli build

serve: install  # rankserve serve builds on first run itself (progress bars, then the summary screen)
	@$(PY) -m serving.cli serve

# The suite has a time budget (docs/measurements/test-suite.md): lint and build side by side, the
# unit tests on the cores (pytest-xdist), then the integration tests one at a time (each starts real
# servers; beside other work they slow down more than it gains); --durations: where the time goes
test: install
	@$(MAKE) --no-print-directory -j2 --output-sync=target lint build
	$(PY) -m pytest -q -n auto --maxprocesses 4 --durations=10 tests/unit
	$(PY) -m pytest -q --durations=30 tests/integration tests/gpu

slow-test: build
	$(PY) -m pytest -q --durations=30 -m slow tests

cluster-test: build
	$(PY) -m pytest -q --durations=30 -m cluster tests

ITEMS ?=
bench: build
	$(PY) -m serving.cli bench $(if $(ITEMS),--items $(ITEMS))

capacity: build
	$(PY) -m serving.cli capacity --p99-ms 50 --peak-rps 2000

chaos: build
	$(PY) -m serving.cli chaos

freshness: build
	$(PY) -m serving.cli freshness $(if $(ITEMS),--items $(ITEMS)) --out docs/freshness-cpu$(if $(ITEMS),-$(ITEMS)).json

scenario-freshness: build
	$(PY) -m serving.cli scenario-freshness $(if $(REPLICAS),--replicas $(REPLICAS)) --out docs/scenario-freshness-cpu$(if $(REPLICAS),-$(REPLICAS)replicas).json

kernel-bench: install
	$(PY) -m kernels.bench

import-bench: install
	$(PY) -m benchmarks.data_import

quality-bench: install
	# the default scale and the second marketplace; ITEMS=N: the demo at N items alone, into its own report
	nice -n 10 $(PY) -m benchmarks.quality --demo-layout $(if $(ITEMS),--items $(ITEMS) --no-second,--items 0) \
		--out docs/quality-bench-cpu$(if $(ITEMS),-$(ITEMS)).json

# ~18 minutes on 2 cores (four server starts, two 6-minute runs); ARGS=--quick for a smoke test
loop-bench: build
	nice -n 10 $(PY) -m benchmarks.loop --out docs/loop-bench-cpu.json $(ARGS)

loadtest: install
	$(PY) -m loadtest.run

gpu-check:
	$(GPU_PY) -m benchmarks.gpu.check $(ARGS)

gpu-check-prepare: install
	$(PY) -m benchmarks.gpu.check prepare

# the generated reference pages (a unit test fails when one is out of date)
.PHONY: docs
docs: install
	$(PY) -m serving.config > docs/reference/settings.md

lint: install
	$(PY) -m ruff check serving kernels training loadtest benchmarks tests examples
	$(PY) -m mypy

clean:
	rm -rf .rankserve model_repository/*/
