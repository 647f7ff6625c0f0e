# GMM-DRIT lab. `make run` runs the whole pipeline, `make test` the tests; both build .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
RUN_DIR ?=
DATA ?=
RUN ?=
ONE_AT_A_TIME ?=
SEED ?= 0
SEEDS ?= 1 2 3 4
# stage-2 settings over the profile's for notebooks 03/04, a JSON object: OPTIONS='{"dc_steps": 3}'
OPTIONS ?=
# handed to the recipe through the environment, as typed: quotes and $ in a value reach the pipeline intact
export STAGE2_OPTIONS := $(value OPTIONS)
# the package versions of the README's clean clones (CPython 3.11); `rm -rf .venv` and CONSTRAINTS=
# for pyproject.toml's open ranges (an existing .venv is kept as it was built)
CONSTRAINTS ?= constraints.txt
STAMP := $(VENV)/.installed
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run seeds test lab clean-runs

# torch==2.13.0 is installed in the same pip command as the rest so nothing can resolve
# another (CUDA, multi-GB) torch build.
# --no-compile: pip would byte-compile all ~15,000 files of the environment (about a minute);
# Python compiles the few thousand that a run imports on first use and caches them in .venv, which is
# why make lets it write bytecode even where PYTHONDONTWRITEBYTECODE is set.
# constraints.txt pins every package to the versions of the README's clean clones; it was resolved on
# CPython 3.11, so on another Python make says so and installs from pyproject.toml's ranges.
# The environment takes about 1.7 GB (torch alone 0.75 GB): say so before pip fails half-way.
NEED_MB := 1800
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@free=$$(df -Pm . | awk 'NR==2 {print $$4}'); if [ "$$free" -lt $(NEED_MB) ]; then \
		echo "make: .venv needs about $(NEED_MB) MB of disk and $$(pwd) has $$free MB free" >&2; exit 1; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	pins="$(CONSTRAINTS)"; if [ -n "$$pins" ] && ! $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then \
		echo "make: $$pins was resolved on CPython 3.11, this is $$($(PY) -V); installing from pyproject.toml's ranges" >&2; pins=; fi; \
	$(PY) -m pip install --quiet --upgrade $${pins:+-c "$$pins"} pip && \
	$(PY) -m pip install --quiet --no-compile $${pins:+-c "$$pins" --build-constraint "$$pins"} "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)

## run every notebook in order with papermill, in two lanes side by side where the cores allow
## (PROFILE=smoke|quick|paper, DATA=your.csv, RUN=name, RUN_DIR=..., SEED=..., ONE_AT_A_TIME=1,
## OPTIONS='{"dc_steps": 3}' for stage 2 with other settings, best with a RUN of its own)
run: $(STAMP)
	$(PY) -m nbutils.pipeline --profile $(PROFILE) --seed $(SEED) $(if $(RUN_DIR),--run-dir "$(RUN_DIR)") \
		$(if $(DATA),--data "$(DATA)") $(if $(RUN),--run "$(RUN)") $(if $(ONE_AT_A_TIME),--one-at-a-time) \
		$(if $(STAGE2_OPTIONS),--options "$$STAGE2_OPTIONS")

## stage 2 trained anew with other SEEDS over a run's slices and GM-VAE, and both models' table over
## seeds (the run as make run names it: PROFILE, DATA, RUN, RUN_DIR; README, "Over seeds")
seeds: $(STAMP)
	$(PY) -m nbutils.seeds --profile $(PROFILE) --seeds $(SEEDS) $(if $(RUN_DIR),--run-dir "$(RUN_DIR)") \
		$(if $(DATA),--data "$(DATA)") $(if $(RUN),--run "$(RUN)")

## unit tests, then every notebook executed by nbmake with the smoke profile
test: $(STAMP)
	$(PY) -m pytest tests -q
	rm -rf data/runs/smoke
	NB_HEADLESS=1 NB_PROFILE=smoke $(PY) -m pytest -q --nbmake --nbmake-timeout=900 notebooks

## open JupyterLab on the notebooks
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

clean-runs:
	rm -rf data/runs data/raw figures/*.png figures/*.html figures/*.csv figures/*.md figures/*.js
