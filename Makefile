# Entry points of the suite. On a fresh machine `make test` and `make train-knee` are all you type:
# the first target that needs it creates .venv and installs the suite into it.
SHELL := /bin/bash
PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: venv browser test test-fast lint format bench screenshots clean \
	train-knee train-ra2 train-spine train-boneage train-mura

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON_BOOT) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (found %d.%d); set PYTHON_BOOT=/path/to/python3.11" % sys.version_info[:2])'
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,jpeg]'
	$(MAKE) --no-print-directory browser
	touch $(STAMP)

# The browser tests (viewer, rendered reports) drive Debian's Chromium through Selenium, and DICOM
# outputs are checked with dciodvfy (dicom3tools). Installed once, as root, from Debian's packages.
BROWSER_PKGS := chromium chromium-driver dicom3tools
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v dciodvfy >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PKGS); }

# Two pytest workers on the two cores (tests/conftest.py gives each one TensorFlow thread pool of 1).
test: venv
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=20 $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: venv
	$(PY) -m bench

# README's report screenshots: each package's report rendered in headless Chromium (docs/report-PKG.png).
screenshots: venv
	REPORT_SCREENSHOTS_DIR=docs $(PY) -m pytest -q -p no:cacheprovider tests/test_reports_browser.py

# --- training entry points: phantoms into data/phantoms/PKG when absent, then the demo preset ---
# The run folder's state (as common.runlock.run_state reads it) decides: a new folder trains, an
# interrupted run (a checkpoint, no newer report) continues with --resume, and a finished one (a
# report newer than its last checkpoint) says where the report is and how to start afresh.
define train_pkg
	@test -d data/phantoms/$(1) || $(PY) -m $(1) synthesize --out-dir data/phantoms/$(1) $(2)
	@run=runs/$(1); ckpt=$$run/checkpoints/state.json; extra=""; \
	case " $(3) " in *" --overwrite "*|*" --resume "*) given=1;; *) given=0;; esac; \
	if [ $$given = 0 ] && [ -f $$run/report.html ] && [ -f $$run/metrics.json ] \
	    && { [ ! -f $$ckpt ] || [ ! $$ckpt -nt $$run/report.html ]; }; then \
	  echo "$$run holds a finished run. Report: $$(pwd)/$$run/report.html"; \
	  echo "To start afresh: make $@ TRAIN_ARGS=--overwrite (or make clean, which removes runs/)"; \
	  exit 0; \
	fi; \
	if [ $$given = 0 ] && [ -f $$ckpt ]; then \
	  echo "$$run holds an interrupted run: continuing it (--resume)"; extra=--resume; \
	fi; \
	$(PY) -m $(1) train --data-dir data/phantoms/$(1) --out-dir $$run --preset demo $$extra $(3) \
	  && echo "Report: $$(pwd)/$$run/report.html"
endef

train-knee: venv
	$(call train_pkg,kneeoa,,$(TRAIN_ARGS))

train-ra2: venv
	$(call train_pkg,deepra,,$(TRAIN_ARGS))

train-spine: venv
	$(call train_pkg,spinenet,,$(TRAIN_ARGS))

train-boneage: venv
	$(call train_pkg,boneage,,$(TRAIN_ARGS))

train-mura: venv
	$(call train_pkg,mura,,$(TRAIN_ARGS))

clean:
	rm -rf runs bench/_work .pytest_cache
