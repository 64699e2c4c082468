#!/usr/bin/env bash
# The tuned comparison of docs/results.md section 6 at a larger budget, for one GPU (JAX).
# NOT RUN YET: written on a CPU machine without an accelerator; its budget is an estimate.
#
# Budget (what it asks for; about 10 minutes on one GPU):
#   - tuning: 5 losses (center, arcface, cosface, triplet, multi-similarity), at most 20 trials
#     each and at most TUNE_SECONDS (default 70) per loss, whichever ends first; 2 class folds
#     of Olivetti's 30 training people; 15 epochs, 64-D embeddings (the section's settings):
#     at most 5 x 70 s = 6 min;
#   - test: each loss at its defaults and at its tuned settings, seeds 0, 1, 2 on the 10
#     people never used (30 runs with their evaluation): about 4 min.
#   With FASHION=1: Fashion-MNIST classes 0-4 for training and tuning, 5-9 for the test
#   (section 3's settings: 5,000 images, 3 epochs) instead of Olivetti.
#
# Needs on the device machine: this checkout, Keras, Optuna (+ SQLAlchemy, Alembic),
# scikit-learn, matplotlib, JAX with CUDA, and the data of ../shared/data (or DATA=folder
# holding keras/ and scikit_learn_data/ as in shared/data). Without network, bring the wheels:
#     bash benchmarks/tune_gpu.sh --fetch-wheels      (on the development machine)
# then carry [".whl"] to the device and run
#     bash benchmarks/tune_gpu.sh                      (timeout_s 600)
# Results go to $OUT (or ./tune-gpu-results): the tuning's tune.json, trials.png, params.png,
# tune.html and the comparison's results.md, comparison.png, with the commands on top.
# SMOKE=1 runs the same commands at toy sizes (to check the script on a CPU machine).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0 optuna==5.1.0 sqlalchemy==2.1.9 alembic==1.20.1
        mako==1.4.3 colorlog==6.12.0)

IMPORTS="import keras, optuna"
SCRIPT="benchmarks/tune_gpu.sh"
source benchmarks/_wheels.sh
DATA="$(cd "${DATA:-../shared/data}" && pwd)" || exit 2
KERAS_HOME="$(mktemp -d)"  # writable (Keras writes keras.json there); the data read-only, linked
ln -s "$DATA/keras/datasets" "$KERAS_HOME/datasets"
export KERAS_BACKEND=jax KERAS_HOME SCIKIT_LEARN_DATA="$DATA/scikit_learn_data"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT_DIR="${OUT:-tune-gpu-results}"
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT_DIR/gpu.txt" 2>&1 || echo "no nvidia-smi" > "$OUT_DIR/gpu.txt"

LOSSES=(center arcface cosface triplet multi-similarity)
if [ "${FASHION:-0}" = 1 ]; then
  SET=(--data fashion-mnist --known-classes 0-4 --embedding-dim 64 --epochs 3 --train-limit 5000 --test-limit 2000)
else
  SET=(--data olivetti --embedding-dim 64 --epochs 15)
fi
TRIALS=20; SECONDS_PER_LOSS="${TUNE_SECONDS:-70}"; SEEDS=0,1,2
if [ "${SMOKE:-0}" = 1 ]; then
  SET=(--data digits --known-classes 0-5 --embedding-dim 8 --epochs 1 --train-limit 300)
  TRIALS=2; SECONDS_PER_LOSS=60; SEEDS=0; LOSSES=(center triplet)
fi
run() {  # name, command...: output to $OUT_DIR/name.log with the command on top
  local name=$1; shift
  echo "=== $name: $*"
  { echo "\$ $*"; "$@"; } > "$OUT_DIR/$name.log" 2>&1 || echo "($name ended with $?)"
  tail -n 25 "$OUT_DIR/$name.log"
}
start=$(date +%s)
run tune python3 -m clusterloss tune --loss "${LOSSES[@]}" "${SET[@]}" --trials $TRIALS \
  --timeout "$SECONDS_PER_LOSS" --folds 2 --out "$OUT_DIR/tune"
echo "tuning: $(( $(date +%s) - start )) s"
run compare python3 -m clusterloss compare "${LOSSES[@]}" --tuned "$OUT_DIR/tune" "${SET[@]}" \
  --seeds $SEEDS --verbose 0 --out "$OUT_DIR/compare"
echo "total: $(( $(date +%s) - start )) s"
rm -rf "$OUT_DIR/tune/trials" "$OUT_DIR/compare/runs"  # the run directories: too large to bring back
