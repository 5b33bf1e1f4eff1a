#!/usr/bin/env bash
# Stage 2 SFT: medical instruction following, from the stage1 checkpoint (CKPT_ROOT/stage1).
# Submit: sbatch launch/stage2.sh [trainer flags]; dry run on this machine: bash launch/stage2.sh.
# Environment variables and resume behaviour: docs/launch.md.
#SBATCH --job-name=infimed-stage2
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

STAGE=stage2
PREV_STAGE=stage1
# sbatch runs a copy of this file from its spool folder: find common.sh from the submit folder.
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ -f "$LAUNCH_DIR/common.sh" ]] || LAUNCH_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}/launch
# shellcheck source=launch/common.sh
source "$LAUNCH_DIR/common.sh"
launch_stage "$@"
