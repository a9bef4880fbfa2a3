# genlab: everything a fresh Linux machine needs, in two commands.
#   make demo   set up, then grade the bundled sample submissions and print the table
#   make test   set up, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.genlab-installed

.PHONY: setup demo test release references verify student-bundle system-packages site clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-runs only when pyproject.toml changes; a venv that already has a torch keeps it.
$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[test]"
	@$(MAKE) --no-print-directory system-packages
	@touch $(STAMP)

# System packages, installed best effort (as root with apt, or with passwordless sudo):
# bubblewrap for the grading sandbox (without it grading runs with resource limits only,
# and says so), chromium for the website's browser test (without it that test skips).
SYSTEM_PACKAGES := bwrap:bubblewrap chromium:chromium

system-packages:
	@for pair in $(SYSTEM_PACKAGES); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -qq $$pkg >/dev/null 2>&1 || \
	    (apt-get update -qq && apt-get install -y -qq $$pkg >/dev/null) || \
	    echo "WARNING: could not install $$pkg"; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	    sudo apt-get install -y -qq $$pkg; \
	  else \
	    echo "WARNING: $$cmd is missing; install it with: apt-get install $$pkg"; \
	  fi; \
	done

# The course website in site/_build/html: the lectures executed (GENLAB_QUICK=1 unless set
# otherwise; GENLAB_QUICK=0 make site runs them in full), the assignments as released.
site: setup
	$(PY) -m sphinx -W --keep-going -b html site site/_build/html
	@echo "open site/_build/html/index.html"

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
