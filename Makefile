# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-web web web-deps browser venv clean

# set-up prints one line; pip's own output goes to $(VENV)/install.log (shown in full if it fails)
$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (torch 2.13.0 CPU, executorch, onnxruntime; log: $(VENV)/install.log)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@( $(PY) -m pip install -q --upgrade pip && \
	   $(PY) -m pip install -q torch==2.13.0 && \
	   $(PY) -m pip install -q -e ".[test]" ) > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@$(VENV)/bin/infini-export demo

test: $(STAMP)
	$(PY) -m pytest -q tests
	$(MAKE) test-web

# JavaScript runtime (web/): Node tests against the Python runtime's goldens, and the demo page in headless Chromium
WEB_ARTIFACT := out/web-onnx
WEB_GOLDENS := out/web-goldens
WEB_DEPS := web/node_modules/.installed

$(WEB_DEPS): web/package.json web/package-lock.json
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

web-deps: $(WEB_DEPS)

$(WEB_ARTIFACT)/manifest.json: $(STAMP) $(wildcard exporters/*.py infini_export/*.py) models/passkey-small/model.safetensors
	$(PY) web/tools/export_artifact.py --checkpoint models/passkey-small -o $(WEB_ARTIFACT)

# the system Chromium for the browser test (CI runs as root); without it that test is skipped, saying why
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium could not be installed: the browser test will be skipped"

test-web: $(STAMP) $(WEB_DEPS) $(WEB_ARTIFACT)/manifest.json browser
	$(PY) web/tools/make_goldens.py --small $(WEB_ARTIFACT) --out $(WEB_GOLDENS)
	cd web && PYTHON=$(abspath $(PY)) INFINI_GOLDENS=$(abspath $(WEB_GOLDENS)) node --test test/*.test.js

# the demo page on http://127.0.0.1:8000/web/demo/ (serves the repository root, this machine only)
web: $(WEB_DEPS) $(WEB_ARTIFACT)/manifest.json
	$(PY) web/tools/serve.py --port 8000 --directory .

clean:
	rm -rf $(VENV) build *.egg-info
