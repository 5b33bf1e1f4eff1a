"""Start the distributed world from torchrun or SLURM and set up megatron-core's parallel state.

| launcher          | rank / world / local rank                    | master address                    |
|-------------------|----------------------------------------------|-----------------------------------|
| torchrun          | RANK, WORLD_SIZE, LOCAL_RANK                 | MASTER_ADDR, MASTER_PORT          |
| srun (no torchrun)| SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID     | first host of SLURM_JOB_NODELIST  |
| plain python      | 0, 1, 0                                      | 127.0.0.1 and a free port         |

NCCL with one GPU per process when CUDA is present; otherwise gloo and the CPU backend.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch

from megatron_infimed.config.run import ParallelConfig
from megatron_infimed.runtime import cpu_backend


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


# The first entry of a host list: names and bracketed ranges up to the first comma outside brackets.
_FIRST_HOSTLIST_ENTRY = re.compile(r"(?:[^,\[\]\s]+|\[[^\[\]]+\])+")


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list, the one ``scontrol show hostnames`` lists first.

    ``gpu-[003-005,9],cpu1`` → ``gpu-003``; ``node7,node8`` → ``node7``; ``a[12]`` → ``a12``;
    ``rack[1-2]-n[07-08]`` → ``rack1-n07`` (each bracket gives its first number, zero padding kept).
    Pure string rules, no scontrol, so every node and container derives the same host.
    """
    text = nodelist.strip()
    first = _FIRST_HOSTLIST_ENTRY.match(text)
    if not first or text[first.end():first.end() + 1] not in ("", ","):
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST {nodelist!r}: expected a SLURM host list "
                         f"such as gpu-[003-005,9],cpu1")
    return re.sub(r"\[([^\]]+)\]", lambda ranges: re.split(r"[,-]", ranges.group(1))[0], first.group(0))


def slurm_job_port(job_id: str | int) -> int:
    """The rendezvous port of SLURM job ``job_id``: ``20000 + job_id % 20000``. Every task derives it
    alone, a requeued job keeps it, and jobs that share a node differ (unless their ids are 20000 apart)."""
    if not str(job_id).strip().isdigit():
        raise ValueError(f"SLURM_JOB_ID {job_id!r} is not a job number")
    return 20000 + int(job_id) % 20000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_from_env(env: dict[str, str] | None = None) -> WorldInfo:
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        return WorldInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                         env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise ValueError("SLURM_PROCID is set but SLURM_JOB_NODELIST is not; cannot find the master host")
        port = int(env.get("MASTER_PORT") or slurm_job_port(env.get("SLURM_JOB_ID", "0")))
        return WorldInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                         env.get("MASTER_ADDR", first_slurm_host(nodelist)), port)
    return WorldInfo(0, 1, 0, "127.0.0.1", _free_port())


def initialize(parallel: ParallelConfig, seed: int) -> WorldInfo:
    """Initialise torch.distributed and megatron-core parallel state; returns this process's place."""
    from megatron.core import parallel_state, tensor_parallel

    world = world_from_env()
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        # With one visible GPU per task (srun --gpus-per-task=1) the local rank can exceed the count.
        torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
    else:
        cpu_backend.enable()
    model_parallel = (parallel.tensor_model_parallel_size * parallel.pipeline_model_parallel_size
                      * parallel.context_parallel_size)
    if world.world_size % model_parallel:
        raise ValueError(f"world size {world.world_size} is not divisible by TP×PP×CP = {model_parallel}")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=f"tcp://{world.master_addr}:{world.master_port}",
            rank=world.rank, world_size=world.world_size,
            timeout=timedelta(minutes=parallel.distributed_timeout_minutes),
        )
    # The tensor/pipeline/data-parallel groups get the same timeout (megatron-core's default is 30).
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        distributed_timeout_minutes=parallel.distributed_timeout_minutes,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    # On the CPU the tracker seeding above touched the default generator: give it a known state.
    torch.manual_seed(seed)
    return world


def device() -> torch.device:
    """Where this process's model and data live: its GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def shutdown() -> None:
    from megatron.core import parallel_state

    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        parallel_state.destroy_model_parallel()
        torch.distributed.destroy_process_group()
