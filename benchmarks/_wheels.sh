# Sourced by the GPU scripts: Keras (and the rest of WHEELS) on a device machine without
# network. Needs WHEELS (pinned wheels), IMPORTS (a Python import line that must work) and
# SCRIPT (the script's path, for the message).
#   SCRIPT --fetch-wheels  (development machine): download the wheels into .whl/ and exit;
#   SCRIPT                 (device machine): if IMPORTS fails, install .whl/ into /tmp/site.
if [ "${1:-}" = "--fetch-wheels" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  ls -la .whl
  exit
fi

if ! python3 -c "$IMPORTS" 2>/dev/null; then
  [ -d .whl ] || { echo "'$IMPORTS' fails here and there is no .whl folder: run bash $SCRIPT --fetch-wheels first" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site
fi
