#!/usr/bin/env bash
# What runs on each node (srun starts one per node; outside SLURM it runs once): exec torchrun with
# the trainer. It runs where training runs (inside the container when there is one), so the
# Python that finds the rendezvous endpoint and expands the config's ${DATA_ROOT} / ${CKPT_ROOT}
# is the training Python. Environment: set by launch/common.sh.
set -euo pipefail

if [[ "${IN_SLURM:-0}" == 1 ]]; then
    # HOST:PORT from RDZV_HOST / RDZV_PORT, else the job's first host and a port from its id.
    endpoint=$("$PYTHON" -m megatron_infimed.runtime.rendezvous)
    rendezvous=(--nnodes "$NODES" --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$endpoint")
else
    rendezvous=(--standalone --nnodes 1)
fi

# `python -m torch.distributed.run` is torchrun, run by the Python that has torch installed.
command=("$PYTHON" -m torch.distributed.run "${rendezvous[@]}" --nproc-per-node "$GPUS_PER_NODE"
         -m megatron_infimed.cli.train --config "$CONFIG" "$@")
# Shell-quoted, so the logged line can be pasted back into a shell.
echo "launch[node $HOSTNAME]: $(printf '%q ' "${command[@]}")"
exec "${command[@]}"
