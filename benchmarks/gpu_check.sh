#!/usr/bin/env bash
# GPU readiness check (issue 13), meant to finish in under 8 minutes on one CUDA GPU:
#   1. the `gpu`-marked tests;
#   2. bench_scale at N = 1e5 and 1e6 (D = 3): torchuot multiscale (KeOps ranges on CUDA) against
#      GeomLoss online and multiscale; a family stops after a run slower than 60 s;
#   3. a fast_dev_run of the MNIST translation config on cuda.
# Usage: bash benchmarks/gpu_check.sh   (from the repository root; PYTHON overrides the interpreter)
# Results: outputs/gpu_check/ (logs, runs.jsonl, table.md).
set -u
PY=${PYTHON:-python}
OUT=outputs/gpu_check
mkdir -p "$OUT"
export TORCHUOT_BENCH_OUT="$OUT" PYTHONPATH="${PYTHONPATH:-$PWD}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" || exit 1
status=0
echo "== 1. gpu tests"
timeout 120 "$PY" -m pytest -q -m gpu tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -5 || status=1
echo "== 2. bench_scale N = 1e5, 1e6 on cuda"
timeout 300 "$PY" benchmarks/bench_scale.py --sizes 100000 1000000 --dims 3 --libs torchuot geomloss \
  --budget 60 --device cuda --skip torchuot-online torchuot-chunked torchuot-tensorized torchuot-multiscale-t5 geomloss-tensorized \
  --markdown "$OUT/table.md" 2>&1 | tee "$OUT/bench_scale.log" | tail -20 || status=1
echo "== 3. fast_dev_run, MNIST translation on cuda"
TORCHUOT_DATA_ROOT=${TORCHUOT_DATA_ROOT:-../shared/data} timeout 90 "$PY" -m training.cli fit \
  --config training/configs/translation_mnist_gpu.yaml --trainer.accelerator=gpu --trainer.devices=1 \
  --trainer.fast_dev_run=true 2>&1 | tee "$OUT/fast_dev_run.log" | tail -5 || status=1
exit $status
