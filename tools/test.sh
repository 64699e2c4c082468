#!/usr/bin/env bash
# Set up .venv (first run), check the formatting and lint (ruff), and run the whole test suite, slow tests included, on the JAX,
# TensorFlow and PyTorch backends: side by side when the machine has the cores (6 or more),
# else one after the other. Extra arguments go to pytest (e.g. -x, -k center, -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU builds of the three backends, pinned (constraints.txt) so that no CUDA build is pulled.
.venv/bin/python -m pip install -q -c constraints.txt torch tensorflow-cpu "jax[cpu]" -e ".[test]"
# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
fi
# The formatter and linter (pyproject.toml's [tool.ruff]) first: a finding fails the run.
status=0
echo "=== ruff"
.venv/bin/ruff format --check --quiet . && .venv/bin/ruff check --quiet . || status=1
BACKENDS=(jax tensorflow torch)
# `-m ""`: the slow tests too (a plain `pytest` leaves them out: pyproject.toml's addopts).
run_backend() { KERAS_BACKEND=$1 .venv/bin/python -m pytest -p no:cacheprovider -m "" "${@:2}"; }
if [ "$(nproc)" -ge 6 ]; then
  logs=$(mktemp -d)
  for backend in "${BACKENDS[@]}"; do
    run_backend "$backend" --basetemp="$logs/tmp-$backend" "$@" >"$logs/$backend.log" 2>&1 &
  done
  for backend in "${BACKENDS[@]}"; do wait -n || status=$?; done
  for backend in "${BACKENDS[@]}"; do echo "=== KERAS_BACKEND=$backend"; cat "$logs/$backend.log"; done
  rm -rf "$logs"
else
  for backend in "${BACKENDS[@]}"; do
    echo "=== KERAS_BACKEND=$backend"
    run_backend "$backend" "$@" || status=$?
  done
fi
exit $status
