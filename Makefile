# mapkd: two set-up commands (`make demo`, `make test`) that work on a fresh machine.
# Both create .venv when it is missing and (re)install it when requirements.txt or setup.py changed;
# when the environment is current this costs well under a second.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mapkd-installed
# No DDS traffic off this machine, in every target.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export PYTHONDONTWRITEBYTECODE := 1
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: venv demo test test-fast bench clean-venv help

help:
	@echo "make demo   - create .venv if needed, replay the synthetic val scenes through the ROS 2 node (mapkd-demo)"
	@echo "make test   - create .venv if needed, run the whole test suite (slow end-to-end tests included)"
	@echo "make test-fast - the suite without tests marked slow"
	@echo "make bench  - run every benchmark in benchmarks/ (JSON into benchmarks/results/)"

venv: $(STAMP)

$(STAMP): requirements.txt setup.py setup.cfg
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mapkd-demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest test $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest test -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean-venv:
	rm -rf $(VENV)
