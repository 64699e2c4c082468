#!/usr/bin/env bash
# The benchmark run for one GPU (the device machine some sessions are lent: one H200, no
# network, PyTorch and JAX installed, no Keras or TensorFlow). Under 8 minutes.
#
# Prepare once, on the development machine (Keras and pytorch-metric-learning travel as wheels):
#     echo /.whl/ >> .git/info/exclude
#     bash benchmarks/gpu.sh --fetch-wheels
# Then on the device machine (device tool: carry [".whl"], timeout_s 540):
#     bash benchmarks/gpu.sh
# The tables go to $OUT (or ./gpu-results), one file per benchmark, plus nvidia-smi's line.
# SMOKE=1 runs the same commands at toy sizes (to check the script on a CPU machine).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0 pytorch-metric-learning==2.9.0)

IMPORTS="import keras"
SCRIPT="benchmarks/gpu.sh"
source benchmarks/_wheels.sh
OUT_DIR="${OUT:-gpu-results}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT_DIR/gpu.txt" 2>&1 || echo "no nvidia-smi" > "$OUT_DIR/gpu.txt"
python3 -c "import jax, torch, keras; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, torch.cuda.is_available(), '| keras', keras.__version__)" >> "$OUT_DIR/gpu.txt" 2>&1

if [ "${SMOKE:-0}" = 1 ]; then
  BIG=2000; HUGE=4000; BATCHES="64"; STEPS="--steps 2 --warmup 1"
else
  BIG=100000; HUGE=1000000; BATCHES="512 2048"; STEPS="--steps 20 --warmup 3"
fi
run() {  # name, command...: the table to $OUT_DIR/name.md, with the command on top
  local name=$1; shift
  echo "=== $name: $*"
  { echo "\$ $*"; timeout 240 "$@"; } > "$OUT_DIR/$name.md" 2>&1 || echo "($name ended with $?)"
  tail -n 20 "$OUT_DIR/$name.md"
}
# Heads: the margin heads against the softmax head, and Partial FC at 1M classes.
run heads python3 benchmarks/bench_heads.py --backends jax torch --classes $BIG \
  --heads softmax arcface cosface $STEPS --threads 16
run partial_fc python3 benchmarks/bench_heads.py --backends jax torch --classes $HUGE \
  --heads softmax --sample-rates 1 0.1 $STEPS --threads 16
# Pair and triplet losses against pytorch-metric-learning (torch on the GPU, both sides).
run losses python3 benchmarks/bench_losses.py --backends jax torch --batches $BATCHES \
  --repeats 5 --threads 16
