# genlab: everything a fresh Linux machine needs, in two commands.
#   make demo   set up, then grade the bundled sample submissions and print the table
#   make test   set up, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.genlab-installed

.PHONY: setup demo test release references verify gpu-check student-bundle system-packages site clean

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

# The course website in site/_build/html: the lectures executed in full (their trained models
# come from the checkpoint cache after the first build; GENLAB_QUICK=1 make site builds in
# seconds, every result then badged as a quick run), the assignments as released.
site: setup
	GENLAB_QUICK=$${GENLAB_QUICK:-0} $(PY) -m sphinx -W --keep-going -b html site site/_build/html
	@echo "open site/_build/html/index.html"

demo: setup
	$(PY) -m autograder demo --out demo-out

# --dist loadfile: a module's tests stay on one worker, so a module-wide fixture (a graded
# class of submissions) is built once, not once per worker
test: setup
	$(PY) -m pytest -n 2 --dist loadfile -q --durations=15

release: setup
	$(PY) -m autograder release all

references: setup
	$(PY) -m autograder references build all

verify: setup
	$(PY) -m autograder references verify all

# Everything that needs a GPU, in one command (never run yet: no GPU was at hand): the reference
# verification on CUDA (adds `cuda` entries to the manifests: commit them), the CUDA tests,
# and the GPU benchmarks of BENCHMARKS.md. Each step's output goes to $(GPU_OUT)/<step>.log;
# a failing step is reported and the next one still runs.
GPU_OUT ?= gpu-results
GPU_STEPS := \
  verify:-m:autograder:references:verify:all \
  cuda-tests:-m:pytest:-q:-rs:tests/test_attention.py:tests/test_encoder.py:tests/test_scgpt.py:tests/test_masks.py:tests/test_train.py:tests/test_checkpoints.py:-k:cuda \
  encoder-step:bench/encoder_step.py:--device:cuda \
  gpt-generate:bench/gpt_generate.py:--device:cuda \
  llama-step:bench/llama_step.py:--device:cuda \
  scgpt-step-fp32:bench/scgpt_step.py:--device:cuda:--fractions:0.25:0.5:0.75 \
  scgpt-step-bf16:bench/scgpt_step.py:--device:cuda:--dtype:bf16:--fractions:0.25:0.5:0.75 \
  gpt-train-mfu:bench/gpt_train_mfu.py:--device:cuda:--dtype:bf16:--batch:16 \
  gpt-train-mfu-compiled:bench/gpt_train_mfu.py:--device:cuda:--dtype:bf16:--batch:16:--compile

gpu-check: setup
	@$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch sees no CUDA device')"
	@mkdir -p $(GPU_OUT); failed=""; \
	for step in $(GPU_STEPS); do \
	  name=$${step%%:*}; args=$$(echo $${step#*:} | tr ':' ' '); \
	  echo "== $$name: $(PY) $$args"; \
	  PYTHONUNBUFFERED=1 $(PY) $$args 2>&1 | tee $(GPU_OUT)/$$name.log; \
	  [ $${PIPESTATUS[0]} = 0 ] || failed="$$failed $$name"; \
	done; \
	echo "logs in $(GPU_OUT)/; commit autograder/references/*/manifest.json"; \
	[ -z "$$failed" ] || { echo "FAILED:$$failed"; exit 1; }

student-bundle: setup
	$(PY) -m autograder bundle --out student-bundle.zip

clean:
	rm -rf demo-out student-bundle.zip .pytest_cache
