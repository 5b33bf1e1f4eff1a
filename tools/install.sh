#!/usr/bin/env bash
# Set up megatron-infimed in ./.venv (or the active virtual environment).
#   bash tools/install.sh        the package and its runtime dependencies
#   bash tools/install.sh test   plus what the test suite needs
# torch is installed first and pinned (2.13.0, a CPU wheel on our dev machines) only when the
# environment has none: an unpinned torch pulls a multi-GB CUDA build, and a GPU cluster's own
# CUDA torch must never be replaced.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  PYTHON=.venv/bin/python
else
  PYTHON="$VIRTUAL_ENV/bin/python"
fi

"$PYTHON" -m pip install --quiet --upgrade pip
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet "torch==${INFIMED_TORCH_VERSION:-2.13.0}"
fi

extras=""
if [[ "${1:-}" == "test" ]]; then
  extras="[test]"
  # The launch-script tests lint with shellcheck when it can be installed.
  if ! command -v shellcheck >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    (apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null) || echo "shellcheck not installed" >&2
  fi
fi
"$PYTHON" -m pip install --quiet -e ".${extras}"
echo "megatron-infimed installed in $("$PYTHON" -c 'import sys; print(sys.prefix)')"
