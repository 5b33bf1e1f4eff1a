#!/usr/bin/env bash
# Pretrain (alignment): projector on caption data, from the weights its config names (big presets:
# the imported Hugging Face weights in CKPT_ROOT/hf-init; tiny: random init) or PRETRAINED_CHECKPOINT.
# Submit: sbatch launch/pretrain.sh [trainer flags]; dry run on this machine: bash launch/pretrain.sh.
# Environment variables and resume behaviour: docs/launch.md.
#SBATCH --job-name=infimed-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -euo pipefail

STAGE=pretrain  # no PREV_STAGE: the first stage
# sbatch runs a copy of this file from its spool folder: find common.sh from the submit folder.
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ -f "$LAUNCH_DIR/common.sh" ]] || LAUNCH_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}/launch
# shellcheck source=launch/common.sh
source "$LAUNCH_DIR/common.sh"
launch_stage "$@"
