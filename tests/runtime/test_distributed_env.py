"""Where a process sits in the world: torchrun variables, then SLURM's, then a lone process."""

import pytest
import torch

from megatron_infimed.runtime.distributed import first_slurm_host, world_from_env


@pytest.mark.parametrize("nodelist, host", [
    ("gpu-node7", "gpu-node7"),
    ("gpu-[003-005,9]", "gpu-003"),
    ("dgx[12,14]", "dgx12"),
    ("a1,b2", "a1"),
])
def test_first_host_of_a_slurm_nodelist(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_torchrun_variables_win():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n0", "MASTER_PORT": "1234",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "x[1-2]"}
    world = world_from_env(env)
    assert (world.rank, world.world_size, world.local_rank, world.master_addr, world.master_port) == (
        3, 8, 1, "n0", 1234)


def test_srun_without_torchrun_uses_slurm_variables():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_JOB_NODELIST": "h100-[01-02]",
           "SLURM_JOB_ID": "4242"}
    world = world_from_env(env)
    assert (world.rank, world.world_size, world.local_rank, world.master_addr) == (5, 16, 5, "h100-01")
    assert world.master_port == 20000 + 4242


def test_slurm_without_nodelist_is_a_clear_error():
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST"):
        world_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"})


def test_a_lone_process_is_rank_zero_of_one():
    world = world_from_env({})
    assert (world.rank, world.world_size, world.local_rank, world.master_addr) == (0, 1, 0, "127.0.0.1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU backend is only enabled where there is no GPU")
def test_cpu_backend_redirects_cuda_tensors(mcore_world):
    # Enabled by the session world; megatron-core's own calls pass device="cuda".
    assert torch.cuda.current_device() == "cpu"
    assert torch.empty(2, device="cuda").device.type == "cpu"
    assert torch.ones(2).cuda().device.type == "cpu"
