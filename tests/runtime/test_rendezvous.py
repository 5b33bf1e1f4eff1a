"""The c10d endpoint every node of a SLURM job derives alone: RDZV_HOST / RDZV_PORT when set, else
the first host of SLURM_JOB_NODELIST and 20000 + SLURM_JOB_ID % 20000; a missing variable is
named, exit 2."""

import os
import subprocess
import sys

import pytest

from megatron_infimed.runtime.distributed import first_slurm_host, slurm_job_port, world_from_env
from megatron_infimed.runtime.rendezvous import endpoint

JOB = {"SLURM_JOB_NODELIST": "gpu-[003-005,9],cpu1", "SLURM_JOB_ID": "4242"}


@pytest.mark.parametrize("nodelist,host", [("gpu-[003-005,9],cpu1", "gpu-003"), ("node7,node8", "node7"),
                                           ("a[12]", "a12"), ("localhost", "localhost"),
                                           ("rack[1-2]-n[07-08]", "rack1-n07"), ("node[01-04]-ib,x", "node01-ib"),
                                           (" dgx[12,14]\n", "dgx12")])
def test_first_host_is_the_one_scontrol_lists_first(nodelist, host):
    assert first_slurm_host(nodelist) == host


@pytest.mark.parametrize("nodelist", ["", "gpu-[003-005", "gpu-]3", ",node1"])
def test_a_malformed_node_list_is_named(nodelist):
    with pytest.raises(ValueError, match=r"cannot parse SLURM_JOB_NODELIST .*expected a SLURM host list"):
        first_slurm_host(nodelist)


def test_the_endpoint_is_the_first_host_and_a_port_from_the_job_id():
    assert endpoint(JOB) == "gpu-003:24242"
    assert endpoint({**JOB, "SLURM_JOB_ID": "123456"}) == "gpu-003:23456"


def test_a_requeued_job_meets_on_the_same_port_and_srun_without_torchrun_uses_it_too():
    port = int(endpoint(JOB).rpartition(":")[2])
    assert port == slurm_job_port("4242")
    world = world_from_env({**JOB, "SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    assert (world.master_addr, world.master_port) == ("gpu-003", port)


def test_rdzv_host_and_port_override_the_job():
    assert endpoint({**JOB, "RDZV_HOST": "login2", "RDZV_PORT": "29400"}) == "login2:29400"
    # Without the job's variables at all: nothing else is needed.
    assert endpoint({"RDZV_HOST": "login2", "RDZV_PORT": "29400"}) == "login2:29400"


@pytest.mark.parametrize("env,missing", [({"SLURM_JOB_ID": "1"}, "SLURM_JOB_NODELIST is not set"),
                                         ({"SLURM_JOB_NODELIST": "n1"}, "SLURM_JOB_ID is not set"),
                                         ({**JOB, "RDZV_PORT": "http"}, "RDZV_PORT 'http' is not a TCP port"),
                                         ({**JOB, "RDZV_PORT": "70000"}, "RDZV_PORT '70000' is not a TCP port"),
                                         ({**JOB, "SLURM_JOB_ID": "12_3"}, "SLURM_JOB_ID '12_3' is not a job")])
def test_a_missing_or_malformed_variable_is_named(env, missing):
    with pytest.raises(ValueError, match=missing):
        endpoint(env)


def run_module(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RDZV_"))}
    return subprocess.run([sys.executable, "-m", "megatron_infimed.runtime.rendezvous"], env={**clean, **env},
                          capture_output=True, text=True)


@pytest.mark.slow  # a fresh Python subprocess
def test_the_module_prints_host_colon_port_for_node_sh():
    result = run_module(SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="4242")
    assert (result.returncode, result.stdout, result.stderr) == (0, "localhost:24242\n", "")


@pytest.mark.slow  # a fresh Python subprocess
def test_the_module_exits_2_naming_the_missing_variable():
    result = run_module(SLURM_JOB_ID="4242")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("rendezvous: error: SLURM_JOB_NODELIST is not set: run inside a SLURM job (srun), "
                             "or set RDZV_HOST\n")
