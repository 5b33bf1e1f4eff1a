# shellcheck shell=bash
# Shared body of launch/{pretrain,stage1,stage2,stage3}.sh: sourced by a stage script, which sets
# STAGE (and PREV_STAGE, the stage whose weights it starts from) and calls `launch_stage "$@"`.
# See docs/launch.md.
#
#   inside a SLURM job (SLURM_JOB_ID set)   srun, one task per node -> launch/node.sh -> torchrun,
#                                           c10d rendezvous on the first host of the allocation
#   outside SLURM (plain `bash`)            launch/node.sh -> torchrun --standalone, one node
#
# Every setting is an environment variable with a default; arguments to the stage script are
# appended to the trainer's flags and win over everything else. Only what must be shell lives
# here: the roots, srun, signal forwarding and the requeue. Python owns the rest: the configs
# expand ${DATA_ROOT} / ${CKPT_ROOT} themselves, megatron_infimed.runtime.rendezvous finds the
# endpoint, and the trainer decides between resuming and starting from pretrained weights.

# --- where things are ------------------------------------------------------------------------
# The repository holds this file (the stage script found it, from the submit folder under sbatch).
resolve_repo_dir() {
    if [[ -n "${REPO_DIR:-}" ]]; then
        printf '%s\n' "$REPO_DIR"
    else
        (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    fi
}

# Processes per node: one per GPU, or one CPU process where there is no GPU.
detect_gpus() {
    local count=0
    if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then
        count=$SLURM_GPUS_ON_NODE
    elif command -v nvidia-smi >/dev/null 2>&1; then
        count=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU' || true)
    fi
    if (( count > 0 )); then echo "$count"; else echo 1; fi
}

# Paths are made absolute once, so every node, container mount and log line means the same folder.
absolute() {
    if [[ "$1" == /* ]]; then printf '%s\n' "$1"; else printf '%s\n' "$PWD/$1"; fi
}

die() {
    echo "launch[$STAGE]: error: $*" >&2
    exit 2
}

# --- settings --------------------------------------------------------------------------------
configure() {
    REPO_DIR=$(resolve_repo_dir)
    IN_SLURM=0
    [[ -n "${SLURM_JOB_ID:-}" ]] && IN_SLURM=1
    # A job trains a real model by default; the plain-bash path is the CPU dry run.
    if (( IN_SLURM )); then PRESET=${PRESET:-infimed-1.7b}; else PRESET=${PRESET:-tiny}; fi
    CONFIG=$(absolute "${CONFIG:-$REPO_DIR/examples/$PRESET/$STAGE.yaml}")
    DATA_ROOT=$(absolute "${DATA_ROOT:-data/prepared}")
    RUN_ROOT=$(absolute "${RUN_ROOT:-runs/$PRESET}")
    CKPT_ROOT=$(absolute "${CKPT_ROOT:-checkpoints/$PRESET}")
    SAVE_DIR=$(absolute "${SAVE_DIR:-$CKPT_ROOT/$STAGE}")
    RUN_DIR=$(absolute "${RUN_DIR:-$RUN_ROOT/$STAGE}")
    NODES=${NODES:-${SLURM_NNODES:-1}}
    GPUS_PER_NODE=${GPUS_PER_NODE:-$(detect_gpus)}
    PYTHON=${PYTHON:-python3}

    [[ -f "$CONFIG" ]] || die "config $CONFIG not found (set CONFIG, or PRESET to one of examples/*/)"
    if (( ! IN_SLURM && NODES > 1 )); then
        die "NODES=$NODES needs a SLURM job (sbatch); outside SLURM the launcher runs one node"
    fi

    # Megatron orders tensor-parallel communication behind compute with one hardware queue.
    export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    # A failed collective raises instead of hanging until the job's time limit.
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
    export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
    # torchrun passes SIGUSR1 (SLURM's warning before the time limit) on to the trainer, which
    # saves and exits; it waits this long for the save before killing the workers.
    export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
    export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-110}
    export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
}

# A 0/1 variable NAME for a trainer switch: 1 adds --FLAG, 0 adds --no-FLAG (to turn off what the
# config turns on, e.g. SP=0 with TP=1 on a preset whose config sets sequence_parallel), unset or
# empty adds nothing.
switch_flag() {
    local name=$1 flag=$2
    local value=${!name:-}
    case "$value" in
        "") ;;
        1) FLAGS+=("--$flag") ;;
        0) FLAGS+=("--no-$flag") ;;
        *) die "$name=$value: set it to 1 (--$flag) or 0 (--no-$flag)" ;;
    esac
}

train_flags() {
    FLAGS=(--save "$SAVE_DIR" --load "$SAVE_DIR" --run-dir "$RUN_DIR")
    # The weights a new run starts from. The trainer refuses a folder without a checkpoint and
    # ignores this when --load resumes; pretrain (no PREV_STAGE) keeps its config's setting.
    if [[ -n "${PRETRAINED_CHECKPOINT:-}" ]]; then
        FLAGS+=(--pretrained-checkpoint "$(absolute "$PRETRAINED_CHECKPOINT")")
    elif [[ -n "${PREV_STAGE:-}" ]]; then
        FLAGS+=(--pretrained-checkpoint "$CKPT_ROOT/$PREV_STAGE")
    fi
    [[ -n "${TP:-}" ]] && FLAGS+=(--tensor-model-parallel-size "$TP")
    [[ -n "${PP:-}" ]] && FLAGS+=(--pipeline-model-parallel-size "$PP")
    [[ -n "${CP:-}" ]] && FLAGS+=(--context-parallel-size "$CP")
    switch_flag SP sequence-parallel
    switch_flag DIST_OPT use-distributed-optimizer
    [[ -n "${TOKENIZER:-}" ]] && FLAGS+=(--tokenizer "$TOKENIZER")
    local extra=()
    # EXTRA_ARGS is split at whitespace; pass values that contain spaces as script arguments.
    read -r -a extra <<< "${EXTRA_ARGS:-}"
    FLAGS+=("${extra[@]}")
}

# Every folder the run reads or writes, mounted at the same path: the working folder, the
# repository and the three roots, leaving out any that lies inside another.
default_mounts() {
    local root kept=() mounts=() k inside
    for root in "$PWD" "$REPO_DIR" "$DATA_ROOT" "$CKPT_ROOT" "$RUN_ROOT"; do
        inside=0
        for k in "${kept[@]}"; do
            if [[ "$root" == "$k" || "$root" == "$k"/* ]]; then inside=1; fi
        done
        if (( ! inside )); then kept+=("$root"); mounts+=("$root:$root"); fi
    done
    (IFS=,; printf '%s\n' "${mounts[*]}")
}

# srun with one task per node, optionally inside a container (pyxis/enroot).
srun_command() {
    SRUN=(srun --nodes="$NODES" --ntasks="$NODES" --ntasks-per-node=1 --kill-on-bad-exit=1)
    if [[ -n "${CONTAINER_IMAGE:-}" ]]; then
        SRUN+=(--container-image="$CONTAINER_IMAGE" --container-mounts="${CONTAINER_MOUNTS:-$(default_mounts)}"
               --container-workdir="$PWD")
    fi
    local extra=()
    read -r -a extra <<< "${SRUN_ARGS:-}"
    SRUN+=("${extra[@]}")
}

# --- running and signals ---------------------------------------------------------------------
# The command runs in the background so this shell can react to signals: `sbatch
# --signal=B:USR1@120` signals only this shell, which hands the signal on (srun forwards it to
# every task, torchrun to every trainer process).
CHILD_PID=""
CAUGHT_SIGNAL=""

forward_signal() {
    CAUGHT_SIGNAL=$1
    echo "launch[$STAGE]: caught SIG$1, passing it to the trainer (save and exit)" >&2
    [[ -n "$CHILD_PID" ]] && kill -s "$1" "$CHILD_PID" 2>/dev/null
    return 0
}

run_forwarding_signals() {
    local status=0
    trap 'forward_signal USR1' USR1
    trap 'forward_signal TERM' TERM
    trap 'forward_signal INT' INT
    "$@" &
    CHILD_PID=$!
    # A trapped signal interrupts `wait` while the child still runs: wait again.
    while kill -0 "$CHILD_PID" 2>/dev/null; do
        wait "$CHILD_PID" || true
    done
    wait "$CHILD_PID" || status=$?
    trap - USR1 TERM INT
    return "$status"
}

launch_stage() {
    configure
    train_flags
    FLAGS+=("$@")
    mkdir -p "$RUN_DIR" "$CKPT_ROOT"

    local node_cmd=(bash "$REPO_DIR/launch/node.sh" "${FLAGS[@]}")
    if (( IN_SLURM )); then
        srun_command
        node_cmd=("${SRUN[@]}" "${node_cmd[@]}")
    fi
    # For node.sh on every node; DATA_ROOT and CKPT_ROOT also fill the configs' ${...} input paths.
    export IN_SLURM NODES GPUS_PER_NODE CONFIG DATA_ROOT CKPT_ROOT PYTHON

    echo "launch[$STAGE]: preset $PRESET, $NODES node(s) x $GPUS_PER_NODE process(es), config $CONFIG"
    echo "launch[$STAGE]: $(printf '%q ' "${node_cmd[@]}")"

    local status=0
    run_forwarding_signals "${node_cmd[@]}" || status=$?
    if [[ "$CAUGHT_SIGNAL" == USR1 ]]; then
        # The time-limit warning: the trainer has saved; run this job again to continue.
        if (( IN_SLURM )) && [[ "${REQUEUE:-1}" == 1 ]]; then
            echo "launch[$STAGE]: requeueing job $SLURM_JOB_ID to resume from $SAVE_DIR"
            scontrol requeue "$SLURM_JOB_ID"
        fi
        return 0
    fi
    return "$status"
}
