#!/usr/bin/env bash
# One prepared GPU check for a single H100/H200 machine without internet (Python 3.12 and torch
# preinstalled, no megatron-core, no Transformer Engine). In one invocation of at most ~8 minutes:
#   1. install the wheels carried in --wheels (megatron-core 0.16.1 cp312 and pure-Python deps),
#   2. run the packed-attention and model tests on CUDA (torch.cuda present: the CPU backend is off,
#      and packed attention takes torch's varlen flash-attention path in bf16),
#   3. measure a bf16 matmul rate, then infimed-1.7b (--layers of 28) at --seq-length packed tokens:
#      tokens/s, TFLOP/s, MFU; results appended to docs/benchmarks.md.
# Without a GPU (or with --dry-run) it runs the dry path: argument checks, wheel discovery, and the
# CPU correctness of a tiny training step. tests/bench/test_gpu_check.py runs that path.
#
# Getting the wheels (on any machine with internet, from the repository root):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl megatron-core==0.16.1 webdataset==1.0.2 braceexpand==0.1.7
# Everything else the checked code imports (numpy, packaging, pyyaml, pillow, sentencepiece,
# tokenizers, safetensors, tqdm, psutil, pytest, transformers) is in the CUDA image already.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: tools/gpu_check.sh [--wheels DIR] [--layers N] [--seq-length N] [--steps N] [--dry-run] [--no-append]
  --wheels DIR      folder of carried wheels (default .whl)
  --layers N        decoder layers of infimed-1.7b to benchmark, 1..28 (default 28)
  --seq-length N    packed tokens per micro-batch (default 8192)
  --steps N         timed training steps (default 8)
  --dry-run         the no-GPU path even on a GPU machine
  --no-append       do not append the results to docs/benchmarks.md
USAGE
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$ROOT/.whl"; LAYERS=28; SEQ=8192; STEPS=8; DRY=0; APPEND=1
PYTHON="${PYTHON:-python3}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
    --layers) LAYERS="${2:?--layers needs a number}"; shift 2 ;;
    --seq-length) SEQ="${2:?--seq-length needs a number}"; shift 2 ;;
    --steps) STEPS="${2:?--steps needs a number}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --no-append) APPEND=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
for pair in "layers:$LAYERS" "seq-length:$SEQ" "steps:$STEPS"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check: --${pair%%:*} must be a positive integer, got '${pair#*:}'" >&2; exit 2; }
done
(( LAYERS <= 28 )) || { echo "gpu_check: --layers must be at most 28 (infimed-1.7b has 28), got $LAYERS" >&2; exit 2; }

# Wheel discovery: one line per required wheel, found or missing.
REQUIRED=("megatron_core-0.16.1-cp312-*.whl" "webdataset-*.whl" "braceexpand-*.whl")
missing=0; found_files=()
for pattern in "${REQUIRED[@]}"; do
  matches=( "$WHEELS"/$pattern )
  if [[ -e "${matches[0]}" ]]; then
    echo "wheel found:   $(basename "${matches[0]}")"; found_files+=("${matches[0]}")
  else
    echo "wheel missing: $pattern (in $WHEELS)"; missing=$((missing + 1))
  fi
done

has_cuda=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
cd "$ROOT"
SITE="${TMPDIR:-/tmp}/infimed-site"
# A machine without megatron-core (the GPU image) needs the carried wheels on either path.
if (( missing == 0 )) && ! "$PYTHON" -c 'import megatron.core' 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${found_files[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ $DRY == 1 || $has_cuda != 1 ]]; then
  echo "dry path (cuda available: $has_cuda): $((${#REQUIRED[@]} - missing)) of ${#REQUIRED[@]} wheels found"
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m megatron_infimed.bench.gpu_check --dry \
    --layers "$LAYERS" --seq-length "$SEQ" --steps "$STEPS"
  echo "gpu_check: dry path passed"
  exit 0
fi

if (( missing > 0 )); then
  echo "gpu_check: $missing wheel(s) missing from $WHEELS; see the pip download command at the top of this script" >&2
  exit 2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c 'import megatron.core, torch; print("megatron-core", megatron.core.__version__, "torch", torch.__version__, torch.cuda.get_device_name(0))'

echo "== tests on CUDA: packed attention, model =="
timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider tests/model/test_packed_attention.py \
  tests/model/test_model_bad_input.py tests/model/test_token_reduction.py

echo "== benchmark: infimed-1.7b ($LAYERS layers), bf16, $SEQ packed tokens =="
args=(--layers "$LAYERS" --seq-length "$SEQ" --steps "$STEPS")
(( APPEND == 1 )) && args+=(--append docs/benchmarks.md)
timeout 300 "$PYTHON" -m megatron_infimed.bench.gpu_check "${args[@]}"
timeout 120 "$PYTHON" -m megatron_infimed.cli.bench attention --json
echo "gpu_check: done"
