# dataloupe — one-command set-up, demo and tests.
#   make demo   set up everything, then run the main job
#   make test   set up everything, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
CM_DIR ?= ../shared/datasets/chihuahua-muffin
PYTEST_ARGS ?=

.PHONY: setup system-deps demo demo-hackathon test test-all bench clean

setup: $(STAMP) system-deps

# Re-installs only when the pinned dependencies change (quick when already done).
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c requirements.lock -e '.[test,timm]'
	touch $(STAMP)

# Debian packages the project uses (when we are root on Debian): the Fashion-MNIST data, and
# headless Chromium for the dashboard's end-to-end tests.
system-deps:
	@if [ -d $(FMNIST_DIR) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "could not install dataset-fashion-mnist; the demo will say how to get it"; \
	else echo "Fashion-MNIST not found at $(FMNIST_DIR) (install Debian package dataset-fashion-mnist)"; fi
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages chromium chromium-driver (dashboard browser tests)"; \
		(apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) || \
		echo "could not install chromium; the browser tests will be skipped"; \
	else echo "Chromium not found at /usr/bin/chromium: browser tests skipped (Debian packages chromium chromium-driver)"; fi

demo: setup
	$(PY) -m dataloupe demo

# The chihuahua-muffin benchmark (bench/hackathon.py): baseline, hackathon and default policies.
#   make demo-hackathon [CM_DIR=path/to/chihuahua-muffin] [HACKATHON_ARGS="--only default"]
demo-hackathon: setup
	@if [ -d "$(CM_DIR)/train128" ]; then $(PY) bench/hackathon.py --data "$(CM_DIR)" $(HACKATHON_ARGS); \
	else echo "chihuahua-muffin data not found at $(CM_DIR): pass CM_DIR=path/to/chihuahua-muffin"; exit 1; fi

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) dataloupe-project bench/.hackathon-project
