"""``--distributed-timeout-minutes`` reaches every process group: the default one and megatron-core's."""

from datetime import timedelta

import pytest
import torch

from megatron_infimed.config.flags import load_config
from megatron_infimed.runtime import distributed


def test_the_timeout_defaults_to_megatrons_ten_minutes_and_must_be_positive():
    config, _ = load_config(["--mock-data"])
    assert config.parallel.distributed_timeout_minutes == 10
    with pytest.raises(ValueError, match="--distributed-timeout-minutes is 0"):
        load_config(["--mock-data", "--distributed-timeout-minutes", "0"])


def test_initialize_passes_the_timeout_to_every_process_group(monkeypatch):
    from megatron.core import parallel_state, tensor_parallel

    calls = {}
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    # Record the calls instead of starting a world (this process may hold one already).
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: calls.update(init=kw))
    monkeypatch.setattr(parallel_state, "initialize_model_parallel", lambda **kw: calls.update(groups=kw))
    monkeypatch.setattr(tensor_parallel, "model_parallel_cuda_manual_seed", lambda seed: None)
    monkeypatch.setattr(distributed.cpu_backend, "enable", lambda: None)
    monkeypatch.setattr(torch, "manual_seed", lambda seed: None)

    config, _ = load_config(["--mock-data", "--distributed-timeout-minutes", "3"])
    distributed.initialize(config.parallel, seed=0)
    assert calls["init"]["timeout"] == timedelta(minutes=3)
    assert calls["groups"]["distributed_timeout_minutes"] == 3
