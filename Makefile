# `make test` sets up .venv on a fresh machine (python3 + pip only) and runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# A plain `torch==2.13.0`: on this project's machines it resolves to the local CPU wheel;
# elsewhere pip picks the platform default. Override with TORCH_SPEC=... if needed.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
