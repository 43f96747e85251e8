# The Skyporten relay. Public targets (partners and CI depend on them):
#   install     the Python venv (.venv) with the console command `skyporten-relay`, and the pinned Azurite
#               (node_modules)
#   demo        the main job end to end on the local stack, with a delivery report
#   test        lint (ruff, and mypy over shared/) and the whole test suite on TEST_WORKERS processes (2; each
#               starts its own Azurite and simulators; TEST_WORKERS=0: one process)
#   stack       start the local stack in the background; data on disk in .local/azurite (kept across restarts),
#               settings in .local/settings.env and local.settings.json (STACK_ARGS=--in-memory: data in memory;
#               STACK_AUDIENCE_MODE=scope|resource: how the Skyporten simulator sets the token's audience)
#               (a running stack is left as it is: `make stack-stop` first to start it with other options)
#   stack-stop  stop exactly what `make stack` started (.local/settings.env goes with it)
#   func        `func start` (Azure Functions Core Tools) on the running stack (FUNC_ARGS: more func options)
#   test-large  the 2 GiB export end to end on the on-disk stack (not part of `make test`)
#   bench       benchmarks (not part of `make test`); results in bench/RESULTS.md
#   lint-infra  parse the Bicep templates and run checkov offline
#   clean       stop the local stack, then delete its data and settings (.local/, the local.settings.json it wrote)
#               and the tools' caches
#   upgrade-pins  upgrade the pinned runtime versions (requirements.txt) within requirements.in's ranges, reinstall
#               .venv and run `make test`: what is deployed is what the tests ran
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed

STACK_ARGS ?=
TEST_WORKERS ?= 2
FUNC_ARGS ?=

.PHONY: install demo test test-large stack stack-stop func bench lint-infra lint clean upgrade-pins

install: $(STAMP_PY) $(STAMP_NODE)

$(STAMP_PY): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(STAMP_NODE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: $(STAMP_PY)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: install lint
	$(PY) -m pytest -n $(TEST_WORKERS)

demo: install
	$(PY) -m sim.demo

test-large: install
	$(PY) -m pytest -m large -p no:cacheprovider tests/sim/test_large_export.py

stack: install
	$(PY) -m sim.stack start --workdir .local $(if $(STACK_AUDIENCE_MODE),--audience-mode $(STACK_AUDIENCE_MODE)) $(STACK_ARGS)

stack-stop:
	@if [ -x $(PY) ]; then $(PY) -m sim.stack stop --workdir .local; fi

func: install
	$(PY) -m sim.func $(FUNC_ARGS)

bench: install
	$(PY) -m bench.run

lint-infra:
	bash scripts/lint-infra.sh

# A scratch venv gets the newest versions requirements.in allows; scripts/pin_requirements.py writes them, with
# everything they need, to requirements.txt; .venv is brought to exactly those and the whole suite runs on them.
upgrade-pins: $(STAMP_PY)
	rm -rf .venv-pins
	$(PYTHON) -m venv .venv-pins
	.venv-pins/bin/python -m pip install --quiet --disable-pip-version-check --upgrade packaging -r requirements.in
	.venv-pins/bin/python scripts/pin_requirements.py
	rm -rf .venv-pins
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP_PY)
	$(MAKE) test

clean:
	@if [ -x $(PY) ]; then $(PY) -m sim.stack clean --workdir .local; fi
	rm -rf .local .pytest_cache .ruff_cache .coverage
