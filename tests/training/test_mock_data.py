"""--mock-data packs are built by the loader's own pack builder: the run's loss weighting and
alignment apply to them as to real data, and micro-batch k is a pure function of (seed, k)."""

import pytest
import torch

from megatron_infimed.config.presets import get_preset
from megatron_infimed.data.pack_builder import PackLayout
from megatron_infimed.training.mock_data import MockDataIterator, mock_pack

CONFIG = get_preset("tiny")


def segments(pack):
    bounds = pack.cu_seqlens.tolist()
    return list(zip(bounds[:-1], bounds[1:]))[:len(pack.sample_ids)]


def test_sample_weighting_gives_every_mock_sample_the_same_total_weight():
    pack = mock_pack(CONFIG, 400, seed=3, index=0, layout=PackLayout(loss_weighting="sample"))
    pack.validate()
    totals = [float(pack.loss_weights[a:b].sum()) for a, b in segments(pack)]
    assert len(totals) > 1 and totals == pytest.approx([1.0] * len(totals))


def test_context_parallel_alignment_applies_to_mock_samples():
    pack = mock_pack(CONFIG, 400, seed=3, index=1, layout=PackLayout(context_parallel=2))
    assert all((b - a) % 4 == 0 for a, b in segments(pack))


def test_micro_batch_k_is_the_same_whatever_the_data_parallel_split():
    one = MockDataIterator(CONFIG, 192, 1, seed=5, dp_rank=0, dp_size=1, num_microbatches=2)
    two = [MockDataIterator(CONFIG, 192, 1, seed=5, dp_rank=r, dp_size=2, num_microbatches=1) for r in (0, 1)]
    alone = [next(one) for _ in range(2)]
    split = [next(two[0]), next(two[1])]
    for a, b in zip(alone, split):
        assert a.sample_ids == b.sample_ids and torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)
    assert all(p.num_tokens == 192 for p in alone)
