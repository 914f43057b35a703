# Two commands: `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch / torchvision: on our machines pip takes these from local disk; override on others.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,train,embed,keops
DATA_ROOT ?= ../shared/data

.PHONY: venv install demo demo-flow test test-all lint bench bench-deps clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv install: $(VENV)/.installed

# UOT flow matching, MNIST thin -> thick digits under class imbalance, CPU, <= 10 min (wall-clock
# capped by trainer.max_time). Writes outputs/demo/report/{samples.png,metrics.json,model.ckpt}.
demo: $(VENV)/.installed
	TORCHUOT_DATA_ROOT=$(DATA_ROOT) $(VENV)/bin/torchuot-train fit --config training/configs/mnist_translation.yaml \
		--trainer.default_root_dir outputs/demo
	@cat outputs/demo/report/metrics.json

# The small gradient-flow demo of the core library (balanced vs unbalanced particle flow).
demo-flow: $(VENV)/.installed
	$(PY) examples/gradient_flow.py --out outputs/gradient_flow

test: $(VENV)/.installed
	OMP_WAIT_POLICY=passive TORCHUOT_DATA_ROOT=$(DATA_ROOT) $(PY) -m pytest -q

test-all: $(VENV)/.installed
	TORCHUOT_DATA_ROOT=$(DATA_ROOT) $(PY) -m pytest -q -m "not gpu"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# TorchCFM is only a benchmark reference; --no-deps avoids torchdyn/pandas (it needs numpy, POT, torch).
bench-deps: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps torchcfm==1.0.7

bench: bench-deps
	$(PY) benchmarks/bench_sinkhorn.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
