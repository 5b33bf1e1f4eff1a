"""Run ``infimed-train`` the way users do: under torchrun, in a subprocess, on the CPU."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               f"--master-port={free_port()}", "-m", "megatron_infimed.cli.train", *args]
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def shard_flags(dataset, tokenizer, **data) -> list[str]:
    """Flags for a one-worker, in-process loader over ``dataset`` (deterministic and quick)."""
    section = {"paths": [str(dataset)], "num_workers": 1, "worker_processes": False, "packing_buffer": 16,
               "shuffle_buffer": 8, **data}
    return ["--preset", "tiny", "--tokenizer", str(tokenizer), "--data", json.dumps(section)]
