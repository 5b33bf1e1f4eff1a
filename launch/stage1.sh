#!/usr/bin/env bash
# Stage 1 SFT: general instruction following, from the pretrain checkpoint (CKPT_ROOT/pretrain).
# Submit: sbatch launch/stage1.sh [trainer flags]; dry run on this machine: bash launch/stage1.sh.
# Environment variables and resume behaviour: docs/launch.md.
#SBATCH --job-name=infimed-stage1
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -euo pipefail

STAGE=stage1
PREV_STAGE=pretrain
# sbatch runs a copy of this file from its spool folder: find common.sh from the submit folder.
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ -f "$LAUNCH_DIR/common.sh" ]] || LAUNCH_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}/launch
# shellcheck source=launch/common.sh
source "$LAUNCH_DIR/common.sh"
launch_stage "$@"
