# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Set IMAGENET=/path/to/imagenet to run the demo on a real class-folder tree instead of the embedded one.
IMAGENET ?=
WORK ?= build/demo
WORKERS ?= 2
# Training flags of the demo: a low-resolution run that learns the embedded classes in a few minutes on 2 cores.
DEMO_TRAIN_ARGS ?= --epochs 8 --batch-size 32 --image-size 64 --lr 0.05 --warmup-epochs 1 --workers 1

.PHONY: demo test install clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The tests also exercise DALI's CPU pipelines (nvidia-dali-cuda130 runs without a GPU with device_id=None).
$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev,dali]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
ifeq ($(strip $(IMAGENET)),)
	$(BIN)/make-demo-imagenet $(WORK)/imagenet
	$(BIN)/shard-imagenet $(WORK)/imagenet --out $(WORK)/shards --shard-size 256 --workers $(WORKERS)
else
	$(BIN)/shard-imagenet $(IMAGENET) --out $(WORK)/shards --workers $(WORKERS)
endif
	$(BIN)/train --data $(WORK)/shards --loader cpu $(DEMO_TRAIN_ARGS) --metrics-json $(WORK)/metrics.json

test: $(BIN)/.installed-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf build
