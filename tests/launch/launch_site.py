"""Helpers to run launch/*.sh as a user would, on CPU: a clean environment, the venv's Python and
torchrun, and, for the SLURM path, stand-ins for `srun` and `scontrol` (real SLURM is absent here)."""

import os
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
JOB_ID = "4242"

# srun: record the call, skip its options, run the command once (a one-node allocation);
# with FAKE_SRUN_DRY=1 only record it.
FAKE_SRUN = """#!/usr/bin/env bash
printf 'srun %s\\n' "$*" >> "$FAKE_SLURM_LOG"
[[ "${FAKE_SRUN_DRY:-0}" == 1 ]] && exit 0
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
exec "$@"
"""
# scontrol: record the call; the launcher only ever asks it to requeue.
FAKE_SCONTROL = """#!/usr/bin/env bash
printf 'scontrol %s\\n' "$*" >> "$FAKE_SLURM_LOG"
[[ "$1" == requeue ]] || { echo "fake scontrol: unsupported: $*" >&2; exit 1; }
"""
# The launcher's parallelism variables (launch/common.sh: train_flags); the tests set them explicitly.
PARALLEL_VARIABLES = ("TP", "PP", "CP", "SP", "DIST_OPT")
# Flags that make a tiny-preset stage a seconds-long CPU run.
CPU_FLAGS = ["--mock-data", "--seq-length", "128", "--global-batch-size", "2", "--log-interval", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LaunchSite:
    """A working folder with the launcher's roots and the fake SLURM tools."""

    root: Path
    ckpt_root: Path
    run_root: Path
    data_root: Path
    fake_bin: Path
    slurm_log: Path

    def env(self, slurm: bool, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("SLURM_", "PET_", "TORCHELASTIC_")) and k not in
                ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PRESET", "CONFIG",
                 "NODES", "GPUS_PER_NODE", *PARALLEL_VARIABLES, "EXTRA_ARGS", "CONTAINER_IMAGE", "TOKENIZER",
                 "PRETRAINED_CHECKPOINT", "RDZV_HOST")}
        env = {**base, "PATH": f"{self.fake_bin}:{Path(sys.executable).parent}:{base.get('PATH', '')}",
               "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
               "PRESET": "tiny", "CKPT_ROOT": str(self.ckpt_root), "RUN_ROOT": str(self.run_root),
               "DATA_ROOT": str(self.data_root), "FAKE_SLURM_LOG": str(self.slurm_log)}
        if slurm:
            env.update(SLURM_JOB_ID=JOB_ID, SLURM_NNODES="1", SLURM_JOB_NODELIST="localhost", SLURM_PROCID="0",
                       SLURM_NTASKS="1", SLURM_LOCALID="0", SLURM_SUBMIT_DIR=str(self.root),
                       RDZV_PORT=str(free_port()))
        return {**env, **extra}

    def command(self, stage: str, *flags: str) -> list[str]:
        return ["bash", str(LAUNCH / f"{stage}.sh"), *flags]

    def run(self, stage: str, *flags: str, slurm: bool, timeout: int = 240, **extra: str):
        return subprocess.run(self.command(stage, *flags), cwd=self.root, env=self.env(slurm, **extra),
                              capture_output=True, text=True, timeout=timeout)

    def slurm_calls(self) -> list[str]:
        return self.slurm_log.read_text().splitlines() if self.slurm_log.exists() else []


def make_site(root: Path) -> LaunchSite:
    fake_bin = root / "fake-bin"
    fake_bin.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        tool = fake_bin / name
        tool.write_text(text)
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    data_root = root / "data"
    data_root.mkdir()
    # --mock-data never reads the tokenizer, but a checkpoint copies the configured one, so the
    # tiny configs' ${DATA_ROOT}/tokenizer.model must exist.
    (data_root / "tokenizer.model").write_bytes(b"placeholder")
    return LaunchSite(root, root / "checkpoints", root / "runs", data_root, fake_bin, root / "slurm-calls.log")
