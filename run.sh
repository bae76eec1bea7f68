#!/usr/bin/env bash
# needles_tf entry point.
#   ./run.sh [--seed=N]      the offline demo (main job): nMNIST, train, export, predict
#   ./run.sh demo-camelyon   the same on nCAMELYON crops of synthetic slides
#   ./run.sh test            the test suite
# The first call creates .venv/ with the package (the demo) or .venv-test/ with the package
# and its test extra (the tests): the demo's environment stays free of what only the tests
# need (pytest, hypothesis, JAX).
set -euo pipefail
cd "$(dirname "$0")"

cmd=demo  # flags alone (./run.sh --seed=1) go to the demo
if [[ $# -gt 0 && "$1" != -* ]]; then
  cmd="$1"
  shift
fi
VENV=.venv
EXTRA=""
if [[ "$cmd" == test ]]; then
  VENV=.venv-test
  EXTRA="[test]"
fi

STAMP="$VENV/.installed-$(cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)"
if [[ ! -f "$STAMP" ]]; then
  echo "[run.sh] setting up $VENV (one-time install) ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".$EXTRA"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
PY="$VENV/bin/python"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

case "$cmd" in
  test)
    exec "$PY" -m pytest "$@"
    ;;
  demo)
    exec "$PY" -m needles_tf.bin.demo "$@"
    ;;
  demo-camelyon)
    exec "$PY" -m needles_tf.bin.demo --part=camelyon "$@"
    ;;
  *)
    echo "usage: ./run.sh [demo|demo-camelyon|test] [args...]" >&2
    exit 2
    ;;
esac
