# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-web web web-deps browser venv venv312 wheels clean

# set-up prints one line; pip's own output goes to $(VENV)/install.log (shown in full if it fails)
# pip compiles no bytecode (--no-compile: two thirds of the set-up's time); Python compiles a module when it first
# imports it (a fraction of what is installed) and keeps it, so the demo and the tests run with bytecode writing on
# (where PYTHONDONTWRITEBYTECODE is set, other commands compile what they import at every start).
# the runtime (its own distribution, runtime/pyproject.toml) first: the toolchain depends on infini-runtime;
# setuptools >= 77, installed first, builds the packages here (no build isolation: no throwaway build environments)
$(STAMP): pyproject.toml runtime/pyproject.toml benchmarks/pyproject.toml
	@echo "setting up $(VENV) (torch 2.13.0 CPU, executorch, onnxruntime; log: $(VENV)/install.log)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@( $(PY) -m pip install -q --no-compile --upgrade pip "setuptools>=77" && \
	   $(PY) -m pip install -q --no-compile torch==2.13.0 && \
	   $(PY) -m pip install -q --no-compile --no-build-isolation -e ./runtime && \
	   $(PY) -m pip install -q --no-compile --no-build-isolation -e ".[test]" && \
	   $(PY) -m pip install -q --no-compile --no-build-isolation --no-deps -e ./benchmarks ) > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

# the two wheels in dist/: infini_runtime-*.whl (torch-free, `infini-run`) and infini_export-*.whl (the toolchain).
# The runtime is built from a copy of its folder: a build leaves build/ and *.egg-info/ in the folder it reads.
RUNTIME_SOURCES := runtime/pyproject.toml $(wildcard runtime/*.py runtime/*/*.py)
# ($(2): the python that builds it, default the environment's)
build_runtime_wheel = tmp=$$(mktemp -d) && cp -r runtime $$tmp/ && rm -rf $$tmp/runtime/build $$tmp/runtime/*.egg-info && $(or $(2),$(PY)) -m pip wheel -q --no-deps --no-build-isolation -w $(1) $$tmp/runtime; rc=$$?; rm -rf $$tmp; exit $$rc

wheels: $(STAMP)
	@mkdir -p dist && rm -f dist/infini_runtime-*.whl dist/infini_export-*.whl
	@$(call build_runtime_wheel,$(abspath dist))
	@$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist . && rm -rf build
	@ls -l dist/*.whl

# Python 3.12 with the runtime wheel and its [executorch] extra (executorch-numpy-runtime: wheels for >= 3.12 only):
# the torch-free ExecuTorch engine's test runs in it. Without a python3.12 the test is skipped, saying why (CI: fails).
# (the first python3.12 that runs: a pyenv shim on PATH may not, where 3.12 is installed but not selected)
ifndef PYTHON312
PYTHON312 := $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python3.12),\
               $(shell $(p) -c 'import sys; print(sys.executable)' 2>/dev/null)))
endif
VENV312 := $(VENV)/py312
STAMP312 := $(VENV312)/.installed

ifeq ($(PYTHON312),)
$(STAMP312):
	@echo "no python3.12 here: the torch-free ExecuTorch test will be skipped"; test -z "$$CI"
else
# (its own setuptools builds the wheel: it is made beside the main environment, not after it)
$(STAMP312): $(RUNTIME_SOURCES)
	@echo "setting up $(VENV312) (Python 3.12, infini-runtime[executorch]; log: $(VENV312).log)"
	@mkdir -p $(VENV)
	@( test -x $(VENV312)/bin/python || $(PYTHON312) -m venv $(VENV312) ) > $(VENV312).log 2>&1
	@( $(VENV312)/bin/python -m pip install -q --no-compile "setuptools>=77" && \
	   wheels=$$(mktemp -d) && ( $(call build_runtime_wheel,$$wheels,$(VENV312)/bin/python) ) && whl=$$(ls $$wheels/*.whl) && \
	   $(VENV312)/bin/python -m pip install -q --no-compile "$$whl[executorch]" && \
	   $(VENV312)/bin/python -m pip install -q --no-compile --no-deps --force-reinstall "$$whl"; \
	   rc=$$?; rm -rf $$wheels; exit $$rc ) >> $(VENV312).log 2>&1 || (cat $(VENV312).log; exit 1)
	@touch $(STAMP312)
endif

venv312: $(STAMP312)

venv: $(STAMP)

# (bytecode written on first import even where the environment turns it off: see the set-up above)
WRITE_BYTECODE := env -u PYTHONDONTWRITEBYTECODE

demo: $(STAMP)
	@$(WRITE_BYTECODE) $(VENV)/bin/infini-export demo

# pytest in 2 processes; each exported test artifact is shared by both (tests/shared.py); a file runs in one of them;
# the slowest tests listed at the end of every run
PYTEST := $(WRITE_BYTECODE) $(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=12

# the set-up steps side by side (pip, npm, the browser), then pytest; the web tests (make test-web) are one of its
# tests (tests/test_web.py), so that they run beside the Python tests
test:
	@$(MAKE) --no-print-directory -j3 $(STAMP) $(STAMP312) $(WEB_DEPS) browser
	$(PYTEST) tests

# the edit loop: no test marked slow (no export beyond the tiny preset's shared ONNX artifacts)
test-fast: $(STAMP)
	$(PYTEST) -m "not slow" tests

# JavaScript runtime (web/): Node tests against the Python runtime's goldens, and the demo page in headless Chromium
# (the passkey model's artifact for the passkey prompt, the text model's for the free-text box)
WEB_ARTIFACT := out/web-onnx
WEB_TEXT_ARTIFACT := out/web-text
WEB_GOLDENS := out/web-goldens
WEB_DEPS := web/node_modules/.installed

$(WEB_DEPS): web/package.json web/package-lock.json
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

web-deps: $(WEB_DEPS)

$(WEB_ARTIFACT)/manifest.json: $(STAMP) $(wildcard exporters/*.py infini_export/*.py) models/passkey-small/model.safetensors
	$(PY) web/tools/export_artifact.py --checkpoint models/passkey-small -o $(WEB_ARTIFACT)

$(WEB_TEXT_ARTIFACT)/manifest.json: $(STAMP) $(wildcard exporters/*.py infini_export/*.py) models/text-small/model.safetensors models/text-small/tokenizer.json
	$(PY) web/tools/export_artifact.py --checkpoint models/text-small -o $(WEB_TEXT_ARTIFACT)

# the system Chromium for the browser test (CI runs as root); without it that test is skipped, saying why
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium could not be installed: the browser test will be skipped"

test-web: $(STAMP) $(WEB_DEPS) $(WEB_ARTIFACT)/manifest.json $(WEB_TEXT_ARTIFACT)/manifest.json browser
	$(PY) web/tools/make_goldens.py --small $(WEB_ARTIFACT) --text $(WEB_TEXT_ARTIFACT) --out $(WEB_GOLDENS)
	cd web && PYTHON=$(abspath $(PY)) INFINI_GOLDENS=$(abspath $(WEB_GOLDENS)) node --test test/*.test.js

# the demo page on http://127.0.0.1:8000/web/demo/ (serves the repository root, this machine only)
web: $(WEB_DEPS) $(WEB_ARTIFACT)/manifest.json $(WEB_TEXT_ARTIFACT)/manifest.json
	$(PY) web/tools/serve.py --port 8000 --directory .

clean:
	rm -rf $(VENV) build *.egg-info runtime/build runtime/*.egg-info
