#!/usr/bin/env bash
# Stage 3 SFT: cross-distribution adaptation (medical + shifted + general replay), from CKPT_ROOT/stage2.
# Submit: sbatch launch/stage3.sh [trainer flags]; dry run on this machine: bash launch/stage3.sh.
# Environment variables and resume behaviour: docs/launch.md.
#SBATCH --job-name=infimed-stage3
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

STAGE=stage3
PREV_STAGE=stage2
# sbatch runs a copy of this file from its spool folder: find common.sh from the submit folder.
LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ -f "$LAUNCH_DIR/common.sh" ]] || LAUNCH_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}/launch
# shellcheck source=launch/common.sh
source "$LAUNCH_DIR/common.sh"
launch_stage "$@"
