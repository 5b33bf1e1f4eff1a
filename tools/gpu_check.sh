#!/usr/bin/env bash
# One prepared GPU check for a single H100/H200 machine without internet (Python 3.12 and torch
# preinstalled, no megatron-core, no Transformer Engine). In one invocation of at most ~8 minutes:
#   1. install the wheels carried in --wheels (megatron-core 0.16.1 cp312, webdataset, braceexpand),
#   2. preflight: import every module the package needs, one line per missing one, before anything long,
#   3. run the packed-attention and model tests on CUDA (torch.cuda present: the CPU backend is off,
#      and packed attention takes torch's varlen flash-attention path in bf16),
#   4. time the real training loop, infimed-train --preset infimed-1.7b --mock-data --bf16
#      --use-distributed-optimizer at --seq-length packed tokens, 2 warm-up + --steps iterations,
#   5. read its metrics.jsonl (tokens/s, TFLOP/s, MFU against the dense bf16 peak), measure the
#      packed-attention error and a bf16 matmul rate, and append it all to docs/benchmarks.md, a
#      failed training run included; then infimed-bench attention at CUDA sizes.
# A failed step does not stop the later ones; the script exits 1 after the last if any failed.
# Without a GPU (or with --dry-run) it runs the dry path: argument checks, wheel discovery, the
# preflight, and infimed-train --preset tiny --mock-data --bf16 on the CPU (the same bf16 code:
# Float16Module and the mixed-precision optimizer; no distributed optimizer: one process has nothing to
# shard, and tests/training/test_distributed_optimizer.py covers it on the CPU), read back
# the same way. tests/bench/test_gpu_check.py runs that path.
#
# Getting the wheels (on any machine with internet, from the repository root):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl megatron-core==0.16.1 webdataset==1.0.2 braceexpand==0.1.7
# Everything else the package imports (numpy, packaging, pyyaml, pillow, sentencepiece, tokenizers,
# safetensors, tqdm, psutil, matplotlib, transformers, pytest) is in the CUDA image already; the
# preflight names anything that is not.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: tools/gpu_check.sh [--wheels DIR] [--layers N] [--seq-length N] [--steps N] [--peak-tflops X]
                          [--append FILE] [--dry-run] [--no-append]
  --wheels DIR       folder of carried wheels (default .whl)
  --layers N         decoder layers of infimed-1.7b to train, 1..28 (default 28)
  --seq-length N     packed tokens per micro-batch (default 8192; the dry path uses 1024)
  --steps N          timed training iterations, after 2 of warm-up (default 8)
  --peak-tflops X    dense bf16 peak MFU divides by (default: NVIDIA's figure for the GPU)
  --append FILE      markdown file to append the results to (default docs/benchmarks.md on a GPU;
                     the dry path appends only when this is given)
  --dry-run          the no-GPU path even on a GPU machine
  --no-append        do not append the results anywhere
USAGE
}

# The words of a command as a shell reads them back (the recorded command can be pasted).
shell_words() {
  local word out=()
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=+-]+$ ]]; then out+=("$word"); else out+=("'$word'"); fi
  done
  echo "${out[*]}"
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$ROOT/.whl"; LAYERS=28; SEQ=8192; STEPS=8; PEAK=""; APPEND_TO=""; DRY=0; APPEND=1
WARMUP=2
PYTHON="${PYTHON:-python3}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) WHEELS="${2:?--wheels needs a folder}"; shift 2 ;;
    --layers) LAYERS="${2:?--layers needs a number}"; shift 2 ;;
    --seq-length) SEQ="${2:?--seq-length needs a number}"; shift 2 ;;
    --steps) STEPS="${2:?--steps needs a number}"; shift 2 ;;
    --peak-tflops) PEAK="${2:?--peak-tflops needs a number}"; shift 2 ;;
    --append) APPEND_TO="${2:?--append needs a file}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --no-append) APPEND=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
for pair in "layers:$LAYERS" "seq-length:$SEQ" "steps:$STEPS"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check: --${pair%%:*} must be a positive integer, got '${pair#*:}'" >&2; exit 2; }
done
[[ -z "$APPEND_TO" || "$APPEND_TO" == /* ]] || APPEND_TO="$PWD/$APPEND_TO"  # the script works from the root
(( LAYERS <= 28 )) || { echo "gpu_check: --layers must be at most 28 (infimed-1.7b has 28), got $LAYERS" >&2; exit 2; }
[[ -z "$PEAK" || "$PEAK" =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "gpu_check: --peak-tflops must be a number of TFLOP/s, got '$PEAK'" >&2; exit 2; }

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
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[[ $DRY == 1 || $has_cuda != 1 ]] && DRY=1

echo "== preflight: imports =="
"$PYTHON" -m megatron_infimed.bench.gpu_check --preflight || {
  echo "gpu_check: modules missing (above); carry their wheels in $WHEELS (see the top of this script)" >&2; exit 2; }

RUN="$(mktemp -d "${TMPDIR:-/tmp}/infimed-gpu-check.XXXXXX")"
peak_args=(); [[ -n "$PEAK" ]] && peak_args=(--peak-tflops "$PEAK")
if [[ $DRY == 1 ]]; then
  echo "dry path (cuda available: $has_cuda): $((${#REQUIRED[@]} - missing)) of ${#REQUIRED[@]} wheels found"
  train=(-m megatron_infimed.cli.train --preset tiny --mock-data --bf16 --seq-length 1024)
  (( APPEND == 1 )) || APPEND_TO=""
else
  if (( missing > 0 )); then
    echo "gpu_check: $missing wheel(s) missing from $WHEELS; see the pip download command at the top of this script" >&2
    exit 2
  fi
  "$PYTHON" -c 'import megatron.core, torch; print("megatron-core", megatron.core.__version__, "torch", torch.__version__, torch.cuda.get_device_name(0))'
  train=(-m megatron_infimed.cli.train --preset infimed-1.7b --mock-data --bf16 --use-distributed-optimizer
         --seq-length "$SEQ")
  (( LAYERS == 28 )) || train+=(--model-overrides "{\"language.num_layers\":$LAYERS}")
  if (( APPEND == 1 )); then APPEND_TO="${APPEND_TO:-docs/benchmarks.md}"; else APPEND_TO=""; fi
fi
train+=(--train-iters $((WARMUP + STEPS)) --log-interval 1 --run-dir "$RUN" "${peak_args[@]}")

failed=()
if [[ $DRY == 0 ]]; then
  echo "== tests on CUDA: packed attention, model =="
  timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider tests/model/test_packed_attention.py \
    tests/model/test_model_bad_input.py tests/model/test_token_reduction.py || failed+=(tests)
fi

shown="infimed-train $(shell_words "${train[@]:2}")"
echo "== the training loop: $shown =="
set +e
timeout 360 "$PYTHON" "${train[@]}" 2>&1 | tee "$RUN/train.log"
train_rc=${PIPESTATUS[0]}
set -e
(( train_rc == 0 )) || failed+=(training)

echo "== figures: the run's metrics.jsonl, attention error$([[ $DRY == 0 ]] && echo ', bf16 matmul rate') =="
check=(--run-dir "$RUN" --warmup "$WARMUP" --steps "$STEPS" --train-exit-code "$train_rc" --train-log "$RUN/train.log"
       --train-command "$shown" "${peak_args[@]}")
[[ $DRY == 1 ]] && check+=(--dry)
[[ -n "$APPEND_TO" ]] && check+=(--append "$APPEND_TO")
timeout 180 "$PYTHON" -m megatron_infimed.bench.gpu_check "${check[@]}" || failed+=(figures)

if [[ $DRY == 0 ]]; then
  echo "== benchmark: packed attention at CUDA sizes =="
  timeout 120 "$PYTHON" -m megatron_infimed.cli.bench attention --json || failed+=(attention-benchmark)
fi
if (( ${#failed[@]} > 0 )); then
  echo "gpu_check: failed: ${failed[*]} (run folder $RUN)" >&2
  exit 1
fi
echo "gpu_check: $([[ $DRY == 1 ]] && echo 'dry path passed' || echo 'done') (run folder $RUN)"
