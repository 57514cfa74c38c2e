# `make demo` and `make test` set up .venv on a fresh machine (python3 + pip only), then
# run the demo (the shipped demo checkpoint, ONNX Runtime on the CPU) or the test suite;
# `make test` also builds the native runtime (`make native`, Debian packages through apt-get).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# A plain `torch==2.13.0`: on this project's machines it resolves to the local CPU wheel;
# elsewhere pip picks the platform default. Override with TORCH_SPEC=... if needed.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
NATIVE := build/native

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rvos-edge demo --out demo_out

test: $(STAMP) native
	TRITON_INTERPRET=1 RVOS_EDGE_NATIVE_REQUIRED=1 $(PY) -m pytest -q tests
	ctest --test-dir $(NATIVE) --output-on-failure

# The C++ runtime (CMakeLists.txt, native/): the Debian packages and ONNX Runtime's headers
# (native/scripts/deps.sh, apt-get as root or through sudo), then a Release build in build/native.
.PHONY: native
native: $(STAMP)
	native/scripts/deps.sh $(NATIVE) $(PY)
	cmake -S . -B $(NATIVE) -DCMAKE_BUILD_TYPE=Release -DRVOS_EDGE_PYTHON=$(CURDIR)/$(PY) \
	    -DRVOS_EDGE_ORT_CMAKE=$(CURDIR)/$(NATIVE)/deps/onnxruntime.cmake
	cmake --build $(NATIVE) -j2

# Every CUDA test and GPU measurement in one command, for a lent GPU machine, where nothing is
# installed: `PYTHONPATH=. make gpu-check` (benchmarks/gpu_check.py). ARGS="--dry-run" runs every
# stage on the CPU with tiny shapes; ARGS="--train" adds the GPU training burst. It uses .venv
# when there is one, else $(PYTHON).
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
.PHONY: gpu-check
gpu-check:
	PYTHONPATH=$(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH)) $(GPU_PY) benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info demo_out
