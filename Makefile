# genlab: everything a fresh Linux machine needs, in two commands.
#   make demo   set up, then grade the bundled sample submissions and print the table
#   make test   set up, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.genlab-installed

.PHONY: setup demo test release references verify student-bundle bubblewrap clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-runs only when pyproject.toml changes; a venv that already has a torch keeps it.
$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[test]"
	@command -v bwrap >/dev/null || $(MAKE) --no-print-directory bubblewrap
	@touch $(STAMP)

# The grading sandbox. Without it grading still runs, with resource limits only, and says so.
bubblewrap:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) || \
	  echo "WARNING: could not install bubblewrap; grading will run unsandboxed"; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo apt-get install -y -qq bubblewrap; \
	else \
	  echo "WARNING: bubblewrap (bwrap) is missing; grading will run unsandboxed. Install: apt-get install bubblewrap"; \
	fi

demo: setup
	$(PY) -m autograder demo --out demo-out

test: setup
	$(PY) -m pytest -n 2 -q

release: setup
	$(PY) -m autograder release all

references: setup
	$(PY) -m autograder references build all

verify: setup
	$(PY) -m autograder references verify all

student-bundle: setup
	$(PY) -m autograder bundle --out student-bundle.zip

clean:
	rm -rf demo-out student-bundle.zip .pytest_cache
