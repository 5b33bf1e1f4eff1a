"""Fixtures for conversion tests: tiny random Hugging Face sources and their TP=1 import/export.

megatron-core's parallel state is process-global: the single-process world is created once per
session and kept (as in tests/model); TP=2 and TP=2/PP=2 run in torchrun subprocesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hf_builders
import pytest
import torch


@dataclass
class HFSources:
    qwen3: Path
    siglip: Path
    qwen3_model: object
    siglip_model: object


@pytest.fixture(scope="session")
def hf_sources(tmp_path_factory) -> HFSources:
    root = tmp_path_factory.mktemp("hf")
    qwen3 = hf_builders.write_qwen3(root / "qwen3")
    siglip = hf_builders.write_siglip(root / "siglip")
    return HFSources(root / "qwen3", root / "siglip", qwen3, siglip)


@pytest.fixture(scope="session")
def mcore_world():
    from megatron_infimed.config.run import ParallelConfig
    from megatron_infimed.runtime import distributed

    if not torch.distributed.is_initialized():
        distributed.initialize(ParallelConfig(), seed=1234)
    yield


@pytest.fixture(scope="session")
def tp1_checkpoint(mcore_world, hf_sources, tmp_path_factory) -> Path:
    from megatron_infimed.convert.import_hf import import_hf, plan_import

    plan = plan_import(hf_sources.qwen3, hf_sources.siglip, preset="tiny")
    return import_hf(plan, tmp_path_factory.mktemp("ckpt") / "tp1")


@pytest.fixture(scope="session")
def tp1_export(tp1_checkpoint, tmp_path_factory) -> Path:
    from megatron_infimed.convert.export_hf import export_hf

    # A small shard limit, so the export really is written as several shards.
    return export_hf(tp1_checkpoint, tmp_path_factory.mktemp("export") / "full", max_shard_size="200KB",
                     progress=False)
