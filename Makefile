# Two entry points (see README): `make demo` and `make test`.
# The Python that makes $(VENV) (README "Supported stacks"): PYTHON=/path/to/python overrides; else python3.11, the
# tested development version, where present; else the first of python3.12, 3.13, 3.10, 3.9, 3.8, python3 on PATH
# whose version is in 3.8-3.13. Empty when none fits: the install then stops with one line saying which work.
SUPPORTED_PYTHONS := 3.11 3.12 3.13 3.10 3.9 3.8
python_fits = $(shell $(1) -c 'import sys; print(sys.executable if (3, 8) <= sys.version_info[:2] <= (3, 13) else "")' 2>/dev/null)
PYTHON ?= $(firstword $(foreach v,$(SUPPORTED_PYTHONS),$(call python_fits,python$(v))) $(call python_fits,python3))
VENV ?= .venv
BIN := $(VENV)/bin
# Set IMAGENET=/path/to/imagenet to run the demo on a real class-folder tree instead of the embedded one.
IMAGENET ?=
WORK ?= build/demo
WORKERS ?= 2
# Training flags of the demo: a low-resolution run that learns the embedded classes in a few minutes on 2 cores.
DEMO_TRAIN_ARGS ?= --epochs 8 --batch-size 32 --image-size 64 --warmup-epochs 1 --workers 1 --log-every 5

# [fast] (nvImageCodec's region decode of train crops) where pip has a wheel: Linux x86_64, Python 3.9+; elsewhere
# the plain install, with a note (README "Versions").
# Every install into a Python 3.11 $(VENV) takes the exact tested versions of constraints.txt; with another Python
# pip resolves pyproject.toml's ranges for it (constraints.txt pins the 3.11 set, e.g. numpy 2.4, absent on 3.8).
CONSTRAINTS := constraints.txt
VENV_PYTHON_VERSION = $(shell p=$(BIN)/python; test -x $$p || p="$(PYTHON)"; $$p -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
PINNED = $(filter 3.11,$(VENV_PYTHON_VERSION))
PIP = $(BIN)/python -m pip install --quiet $(if $(PINNED),-c $(CONSTRAINTS))

.PHONY: demo test install flagperf simd unsimd clean gpu-wheels gpu-check gpu-smoke

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || test -n "$(PYTHON)" || { echo "make: no Python 3.8-3.13 found (python3.11 is the tested \
	one); install one, or pass PYTHON=/path/to/python3.X"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -n "$(PINNED)" || echo "make: $(VENV) has Python $(VENV_PYTHON_VERSION), not the tested 3.11: installing \
	pyproject.toml's ranges, not constraints.txt's pins"
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(PIP) -e '.[dev,fast]' || { echo "make: installing without [fast] (no nvImageCodec wheel?): slower train decode"; $(PIP) -e '.[dev]'; }
	touch $@

# The tests also exercise DALI's CPU pipelines (nvidia-dali-cuda130 runs without a GPU with device_id=None).
$(BIN)/.installed-test: $(BIN)/.installed
	$(PIP) -e '.[dev,fast,dali]' $(if $(PINNED),,|| echo "make: no DALI wheel for Python $(VENV_PYTHON_VERSION): the DALI tests will be skipped")
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
ifeq ($(strip $(IMAGENET)),)
	$(BIN)/make-demo-imagenet $(WORK)/imagenet
	$(BIN)/shard-imagenet $(WORK)/imagenet --out $(WORK)/shards --shard-size 256 --workers $(WORKERS)
else
	$(BIN)/shard-imagenet $(IMAGENET) --out $(WORK)/shards --workers $(WORKERS)
endif
	rm -rf $(WORK)/run && $(BIN)/train --data $(WORK)/shards --loader cpu $(DEMO_TRAIN_ARGS) --output-dir $(WORK)/run --plot

# FlagPerf sweep (README "FlagPerf vendor page"): shard IMAGENET (resumable: a finished run is skipped), run the
# packaged FlagPerf presets (train/presets/flagperf, those of the visible device's vendor) that fit NPROC processes,
# write the vendor page to $(FLAGPERF_OUT)/README.md.
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

# GPU check (README: "GPU check"). The GPU machine has torch but not this small wheel: fetch it here for
# its Python 3.12 (CPython, manylinux x86_64) at the version of constraints.txt into $(GPU_WHEELS)/ (git-ignored),
# and carry that folder there; benchmarks/gpu_check.py installs it into a temporary folder before it runs. Only what
# the code there imports (tests/unit/test_dependencies.py checks it): the test tools (webdataset, ...) stay here.
# DALI (the version of constraints.txt, ~190 MiB) and what it needs that the GPU machine lacks (pip's resolution of
# nvidia-dali-cuda130==2.4.0 here, minus what its image holds: numpy, packaging, six, typing-extensions; ~66 MiB) are
# over the 64 MiB one device call carries: they go to $(GPU_DALI_DIR)/ and are split by benchmarks/gpu_wheels.py
# into $(GPU_WHEELS_PARTS)/01, 02, ... (git-ignored), each small enough that the working tree + $(GPU_WHEELS) + one
# part folder leave $(GPU_PART_MARGIN_MIB) MiB of the 64 free; it prints the device calls that carry them, back to
# back, the last running the check (which joins, verifies and installs them). `make gpu-wheels-calls` reprints them.
GPU_WHEELS ?= .gpu-wheels
GPU_WHEEL_PKGS := simplejpeg
GPU_DALI_PKGS := nvidia-dali-cuda130
GPU_DALI_DEPS := astunparse==1.6.3 gast==0.7.0 optree==0.20.0 nvtx==0.2.17 makefun==1.16.0 libcst==1.9.0 \
  nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43 nvidia-nvjpeg2k-cu13==0.11.0.51 \
  nvidia-nvtiff-cu13==0.8.0.82 nvidia-libnvcomp-cu13==5.3.0.16
GPU_DALI_DIR ?= build/gpu-wheels-dali
GPU_WHEELS_PARTS ?= .gpu-wheels-parts
GPU_PART_MARGIN_MIB ?= 8
GPU_PY_VERSION ?= 3.12
GPU_PYTHON ?= python3
pin = $(shell grep -m1 -i '^$(1)==' $(CONSTRAINTS))
GPU_DOWNLOAD = $(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PY_VERSION) \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
GPU_TREE_BYTES = git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -n1 | cut -f1
.PHONY: gpu-wheels-calls
gpu-wheels:
	rm -rf $(GPU_WHEELS) $(GPU_DALI_DIR)
	$(GPU_DOWNLOAD) -d $(GPU_WHEELS) $(foreach p,$(GPU_WHEEL_PKGS),$(call pin,$(p)))
	$(GPU_DOWNLOAD) -d $(GPU_DALI_DIR) $(foreach p,$(GPU_DALI_PKGS),$(call pin,$(p))) $(GPU_DALI_DEPS)
	@ls -l $(GPU_WHEELS) $(GPU_DALI_DIR)
	@t=$$($(GPU_TREE_BYTES)); w=$$(du -cb $(GPU_WHEELS)/*.whl | tail -n1 | cut -f1); \
	 p=$$(awk -v w=$$w -v t=$$t -v m=$(GPU_PART_MARGIN_MIB) 'BEGIN { print int(64 - m - (w + t) / 1048576) }'); \
	 echo "working tree $$((t / 1048576)) MiB + $(GPU_WHEELS) $$((w / 1024)) KiB: DALI parts of at most $$p MiB"; \
	 test $$p -ge 8 || { echo "make gpu-wheels: the working tree leaves under 8 MiB a call for a part"; exit 1; }; \
	 $(PYTHON) -m benchmarks.gpu_wheels split $(GPU_DALI_DIR)/*.whl --out $(GPU_WHEELS_PARTS) --part-mib $$p
	@$(MAKE) --no-print-directory gpu-wheels-calls

gpu-wheels-calls:
	@$(PYTHON) -m benchmarks.gpu_wheels calls --parts-dir $(GPU_WHEELS_PARTS) --tree-bytes $$($(GPU_TREE_BYTES)) \
	  --first-carry $(GPU_WHEELS)

# On the GPU machine (its own python3; nothing installed from a registry there): one run, <= 8 minutes.
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py

# The same code path with tiny sizes on this machine's CPU (< 3 minutes).
gpu-smoke: $(BIN)/.installed-test
	$(BIN)/python benchmarks/gpu_check.py --smoke

# Stack matrix (issue 18; README "Supported stacks and `make compat`"): per leg, a venv in build/compat/<leg>/venv
# (pyenv's Python, reused when present) with the leg's torch/torchvision and the project as pyproject.toml's ranges
# resolve there, its unit tests, one end-to-end run per backend and the cpu loader's rate against $(VENV);
# writes build/compat/results.{json,md} and every command's output to build/compat/<leg>/log.txt.
# COMPAT_LEGS: comma list of py38 (3.8.18, torch 2.0.1), py310 (3.10.13, 2.1.2), py312 (3.12.1, 2.11.0),
# py313 (3.13.0, 2.14.1). COMPAT_ARGS: more flags (--bench-rounds N, --out DIR; --keep-going is the default here:
# set COMPAT_ARGS= to stop at the first failed leg). COMPAT_PYTHON: any python3 >= 3.8 runs the driver (stdlib only).
COMPAT_LEGS ?= py38,py310,py312,py313
COMPAT_ARGS ?= --keep-going
COMPAT_PYTHON ?= python3
.PHONY: compat
compat: $(BIN)/.installed
	$(COMPAT_PYTHON) benchmarks/compat.py --legs $(COMPAT_LEGS) --dev-venv $(VENV) $(COMPAT_ARGS)

clean:
	rm -rf build
