"""Shared fixtures. ``shared_dir`` is the read-only ../shared folder that sits beside a clone
(CI lays a copy there); ``INFIMED_SHARED`` overrides it."""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = Path(os.environ.get("INFIMED_SHARED", REPO_ROOT.parent / "shared"))
    if not (path / "data" / "vqa_rad").is_dir():
        raise FileNotFoundError(f"shared data not found at {path}; set INFIMED_SHARED to the shared/ folder")
    return path


@pytest.fixture(scope="session")
def vqa_rad_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "vqa_rad"


@pytest.fixture(scope="session")
def mcore_world():
    """In-process megatron-core world (one gloo rank, CPU backend). Parallel state is
    process-global, so it is created once and kept; multi-rank layouts run under torchrun."""
    from megatron_infimed.config.run import ParallelConfig
    from megatron_infimed.runtime import distributed

    if not torch.distributed.is_initialized():
        distributed.initialize(ParallelConfig(), seed=1234)
    yield
