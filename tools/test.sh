#!/usr/bin/env bash
# Set up .venv (first run) and run the whole test suite on the JAX, TensorFlow and PyTorch
# backends, one after the other. Extra arguments go to pytest (e.g. -x, -k center).
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
status=0
for backend in jax tensorflow torch; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -p no:cacheprovider "$@" || status=$?
done
exit $status
