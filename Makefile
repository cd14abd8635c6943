# One virtual environment for everything. torch is installed first, pinned: a bare
# `torch` requirement on a CPU machine pulls a multi-GB CUDA build (see README, GPUs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
MODEL ?= toy
PROMPT ?= a red circle moves to the right on a black background
OUTPUT ?= outputs/sample.mp4
PYTEST_ARGS ?=

.PHONY: install run test bench clean redis-server

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The main job: start the local cluster with the built-in default model, generate a sample
# video through the HTTP API, save it, and keep serving until Ctrl-C (UP_ARGS=--exit-after-sample to stop).
UP_ARGS ?=
run: install
	$(BIN)/videoserve up --model $(MODEL) --sample-prompt "$(PROMPT)" --sample-output $(OUTPUT) $(UP_ARGS)

# The whole test suite. It starts a real redis-server, installed here if missing (Debian).
test: install redis-server
	$(BIN)/python -m pytest $(PYTEST_ARGS)

redis-server:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)

# Per-stage timings of the bench preset (see benchmarks/RESULTS.md).
bench: install
	$(BIN)/python -m benchmarks.stage_timings

clean:
	rm -rf $(VENV) outputs .pytest_cache
