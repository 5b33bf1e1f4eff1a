#!/usr/bin/env bash
# What runs on each node (srun starts one per node; outside SLURM it runs once): rebase the
# config's placeholder input paths onto DATA_ROOT / CKPT_ROOT, then exec torchrun with the trainer.
# It runs where training runs (inside the container when there is one), so the Python that
# reads the YAML is the training Python. Environment: set by launch/common.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The config's placeholder paths, rebased: flags placed before the caller's, so that explicit
# flags (TOKENIZER, EXTRA_ARGS, script arguments) still win.
rebased=()
paths=$("$PYTHON" "$here/config_paths.py" "$CONFIG" \
    --rebase "data/prepared=$DATA_ROOT" --rebase "checkpoints/$PRESET=$CKPT_ROOT")
[[ -n "$paths" ]] && mapfile -t rebased <<< "$paths"

if [[ "${IN_SLURM:-0}" == 1 ]]; then
    rendezvous=(--nnodes "$NODES" --rdzv-id "$RDZV_ID" --rdzv-backend c10d
                --rdzv-endpoint "$RDZV_HOST:$RDZV_PORT")
else
    rendezvous=(--standalone --nnodes 1)
fi

# `python -m torch.distributed.run` is torchrun, run by the Python that has torch installed.
command=("$PYTHON" -m torch.distributed.run "${rendezvous[@]}" --nproc-per-node "$GPUS_PER_NODE"
         -m megatron_infimed.cli.train --config "$CONFIG" "${rebased[@]}" "$@")
# Shell-quoted, so the logged line can be pasted back into a shell.
echo "launch[node $HOSTNAME]: $(printf '%q ' "${command[@]}")"
exec "${command[@]}"
