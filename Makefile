# Two commands: `make demo` (the main job) and `make test` (the suite). Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgekit-installed
# dev/CI pins (torch 2.13.0 CPU build); pyproject.toml stays permissive for users. .ci/install.py fills
# the venv with uv when it can be had (52 s for a fresh 2-core clone against pip's 150 s, same releases), else with
# pip; either byte-compiles what it installs: where PYTHONDONTWRITEBYTECODE is set, as on this
# project's machines, nothing compiled later is kept, and every test process then recompiled torch
# (1.5 s each; the suite took 11:09 instead of 9:32 with pip's --no-compile, 2026-12-06).
INSTALL := $(BIN)/python .ci/install.py -c constraints.txt

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing edgekit[dev] into $(VENV) (log: $(VENV)/pip.log) ..."
	@$(INSTALL) -e '.[dev]'
	@$(BIN)/python -c "import edgekit, torch, onnxruntime, openvino; print('edgekit installed, torch', torch.__version__)"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/edgekit export mobilenet_v3 --target onnx --out artifacts/demo-onnx --force
	$(BIN)/edgekit export mobilenet_v3 --target onnx --fp16 --out artifacts/demo-onnx-fp16 --force

# Two pytest workers (pytest-xdist), one test file each at a time (--dist loadfile keeps a file's
# module fixtures, e.g. the Ray cluster, in one process). TEST_JOBS=0 runs in this process.
TEST_JOBS ?= 2
# edgekit's own modules are byte-compiled first for the same reason (0.1 s per test process).
# --durations: the 25 slowest tests end the log, so that CI time can be spent where it goes.
test: $(STAMP)
	@$(BIN)/python -m compileall -q edgekit exporters calibration
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile --durations=25 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/matrix.py --out bench/results/matrix.json

clean:
	rm -rf artifacts out bench/results .pytest_cache
