"""Print the c10d rendezvous endpoint ``HOST:PORT`` of a SLURM job, for torchrun on every node.

    $ SLURM_JOB_NODELIST='gpu-[003-005]' SLURM_JOB_ID=4242 python -m megatron_infimed.runtime.rendezvous
    gpu-003:24242

| part | from                                   | else                                                 |
|------|----------------------------------------|------------------------------------------------------|
| host | ``RDZV_HOST``                          | the first host of ``SLURM_JOB_NODELIST``             |
| port | ``RDZV_PORT``                          | ``20000 + SLURM_JOB_ID % 20000``, as ``world_from_env`` |

launch/node.sh runs this on each node, with the training Python (inside the container when there
is one). Each node derives the same endpoint from the job's variables alone, with no scontrol and
no exchange, and a requeued job keeps its id and so its port. A missing or malformed variable is
named on stderr, exit 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from megatron_infimed.runtime.distributed import first_slurm_host, slurm_job_port


def endpoint(env: Mapping[str, str]) -> str:
    """``HOST:PORT`` from ``RDZV_HOST`` / ``RDZV_PORT``, else from the SLURM job's node list and id."""
    host = env.get("RDZV_HOST") or first_slurm_host(_required(env, "SLURM_JOB_NODELIST", instead="RDZV_HOST"))
    port = env.get("RDZV_PORT") or str(slurm_job_port(_required(env, "SLURM_JOB_ID", instead="RDZV_PORT")))
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"RDZV_PORT {port!r} is not a TCP port (1-65535)")
    return f"{host}:{int(port)}"


def _required(env: Mapping[str, str], name: str, instead: str) -> str:
    if not env.get(name):
        raise ValueError(f"{name} is not set: run inside a SLURM job (srun), or set {instead}")
    return env[name]


def main() -> int:
    try:
        print(endpoint(os.environ))
    except ValueError as error:
        print(f"rendezvous: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
