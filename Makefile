# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Set IMAGENET=/path/to/imagenet to run the demo on a real class-folder tree instead of the embedded one.
IMAGENET ?=
WORK ?= build/demo
WORKERS ?= 2
# Training flags of the demo: a low-resolution run that learns the embedded classes in a few minutes on 2 cores.
DEMO_TRAIN_ARGS ?= --epochs 8 --batch-size 32 --image-size 64 --warmup-epochs 1 --workers 1 --log-every 5

# Every install into $(VENV) takes the exact tested versions of constraints.txt (pyproject.toml: the ranges).
CONSTRAINTS := constraints.txt
PIP := $(BIN)/python -m pip install --quiet -c $(CONSTRAINTS)

.PHONY: demo test install flagperf simd unsimd clean gpu-wheels gpu-check gpu-smoke

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP) -e '.[dev]'
	touch $@

# The tests also exercise DALI's CPU pipelines (nvidia-dali-cuda130 runs without a GPU with device_id=None).
$(BIN)/.installed-test: $(BIN)/.installed
	$(PIP) -e '.[dev,dali]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
ifeq ($(strip $(IMAGENET)),)
	$(BIN)/make-demo-imagenet $(WORK)/imagenet
	$(BIN)/shard-imagenet $(WORK)/imagenet --out $(WORK)/shards --shard-size 256 --workers $(WORKERS)
else
	$(BIN)/shard-imagenet $(IMAGENET) --out $(WORK)/shards --workers $(WORKERS)
endif
	$(BIN)/train --data $(WORK)/shards --loader cpu $(DEMO_TRAIN_ARGS) --metrics-json $(WORK)/metrics.json --plot

# FlagPerf sweep (README "FlagPerf vendor page"): shard IMAGENET (resumable: a finished run is skipped), run the
# configs/flagperf presets that fit NPROC processes, write the vendor page to $(FLAGPERF_OUT)/README.md.
# SWEEP_ARGS: train flags for every run (e.g. --max-steps 200 --no-eval for a short sweep).
NPROC ?= $(shell $(BIN)/python -c "import torch; print(max(1, torch.cuda.device_count()))" 2>/dev/null || echo 1)
FLAGPERF_OUT ?= build/flagperf
FLAGPERF_SHARDS ?= build/flagperf-shards
PRECISIONS ?= fp32,amp,fp16
SWEEP_ARGS ?=
flagperf: $(BIN)/.installed
	@test -n "$(strip $(IMAGENET))" || { echo "make flagperf: set IMAGENET=/path/to/imagenet (class folders)"; exit 2; }
	$(BIN)/shard-imagenet $(IMAGENET) --out $(FLAGPERF_SHARDS) --workers $(WORKERS)
	$(BIN)/flagperf-sweep --data $(FLAGPERF_SHARDS) --out $(FLAGPERF_OUT) --nproc $(NPROC) --precisions $(PRECISIONS) \
	  -- $(SWEEP_ARGS)

test: $(BIN)/.installed-test
	$(BIN)/python -m pytest -q

# Optional speed-up: replace stock Pillow in the venv by pillow-simd (SIMD resize / colour conversion; AVX2 on
# x86-64), built from source. Needs a C compiler and the libjpeg + zlib headers (Debian/Ubuntu:
# sudo apt-get install -y libjpeg-dev zlib1g-dev). Any later `pip install` that pulls stock Pillow back (e.g. after
# pyproject.toml changes) undoes it; `train` and the benchmarks print which one is in use. Undo: `make unsimd`.
PILLOW_SIMD ?= pillow-simd==12.1.1.post0
SIMD_CC := $(if $(filter x86_64,$(shell uname -m)),cc -mavx2,cc)
simd: $(BIN)/.installed
	@for h in jpeglib.h zlib.h; do printf '#include <stddef.h>\n#include <stdio.h>\n#include <%s>\n' $$h | cc -E -x c - >/dev/null 2>&1 || \
	  { echo "make simd: $$h not found; install the headers: sudo apt-get install -y libjpeg-dev zlib1g-dev"; exit 1; }; done
	$(BIN)/python -m pip uninstall --quiet -y pillow pillow-simd
	CC="$(SIMD_CC)" $(BIN)/python -m pip install --quiet --no-deps --no-binary pillow-simd $(PILLOW_SIMD) || \
	  { $(BIN)/python -m pip install --quiet pillow; echo "make simd: build failed, stock Pillow restored"; exit 1; }
	$(BIN)/python -c "from pipeline.read.transforms import decoder_name; print('decoders:', decoder_name())"

unsimd: $(BIN)/.installed
	$(BIN)/python -m pip uninstall --quiet -y pillow-simd pillow
	$(PIP) pillow
	$(BIN)/python -c "from pipeline.read.transforms import decoder_name; print('decoders:', decoder_name())"

# GPU check (README: "GPU check"). The GPU machine has torch but not these pure/small wheels: fetch them here for
# its Python 3.12 (CPython, manylinux x86_64) at the versions of constraints.txt into $(GPU_WHEELS)/ (git-ignored),
# and carry that folder there; benchmarks/gpu_check.py installs them into a temporary folder before it runs.
GPU_WHEELS ?= .gpu-wheels
GPU_WHEEL_PKGS := simplejpeg webdataset braceexpand
GPU_PY_VERSION ?= 3.12
GPU_PYTHON ?= python3
pin = $(shell grep -m1 -i '^$(1)==' $(CONSTRAINTS))
gpu-wheels:
	rm -rf $(GPU_WHEELS)
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PY_VERSION) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d $(GPU_WHEELS) $(foreach p,$(GPU_WHEEL_PKGS),$(call pin,$(p)))
	@ls -l $(GPU_WHEELS)
	@w=$$(du -cb $(GPU_WHEELS)/*.whl | tail -n1 | cut -f1); \
	 t=$$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -n1 | cut -f1); \
	 awk -v w=$$w -v t=$$t 'BEGIN { printf "wheels %.2f MiB + working tree %.2f MiB = %.2f MiB of the 64 MiB a device call carries\n", w / 1048576, t / 1048576, (w + t) / 1048576 }'

# On the GPU machine (its own python3; nothing installed from a registry there): one run, <= 8 minutes.
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py

# The same code path with tiny sizes on this machine's CPU (< 3 minutes).
gpu-smoke: $(BIN)/.installed-test
	$(BIN)/python benchmarks/gpu_check.py --smoke

clean:
	rm -rf build
