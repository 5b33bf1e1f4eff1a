"""Tensor-parallel pieces (``model/tp_shard.py``), the layout initialisation and checkpoint import share."""

import torch

from megatron_infimed.model.tp_shard import split_for_rank

# Rows g0 g1 (gate) then u0 u1 (up), one column each: the SwiGLU fc1 weight at TP=2.
FC1 = torch.tensor([[0.0], [1.0], [10.0], [11.0]])


def test_swiglu_fc1_rank_keeps_its_slice_of_gate_and_of_up():
    assert split_for_rank(FC1, 0, rank=0, size=2, gated=True).flatten().tolist() == [0.0, 10.0]
    assert split_for_rank(FC1, 0, rank=1, size=2, gated=True).flatten().tolist() == [1.0, 11.0]


def test_plain_weight_rank_keeps_consecutive_rows_or_columns():
    assert split_for_rank(FC1, 0, rank=1, size=2, gated=False).flatten().tolist() == [10.0, 11.0]
    assert split_for_rank(FC1.T, 1, rank=0, size=2, gated=False).flatten().tolist() == [0.0, 1.0]


def test_replicated_parameter_is_returned_whole():
    assert split_for_rank(FC1, None, rank=1, size=2, gated=True) is FC1


def test_pieces_of_every_rank_rebuild_the_full_gated_tensor():
    pieces = [split_for_rank(FC1, 0, rank=r, size=2, gated=True) for r in range(2)]
    gate = torch.cat([p.chunk(2)[0] for p in pieces])
    up = torch.cat([p.chunk(2)[1] for p in pieces])
    assert torch.equal(torch.cat([gate, up]), FC1)
