"""Context parallelism's pieces (model/context_parallel.py): which tokens a rank holds, the real
and padded boundaries, and, on two gloo ranks, that the split attention and the shared vision
work give the unsplit results and gradients."""

import os
import tempfile
from datetime import timedelta

import pytest
import torch

from megatron_infimed.model.context_parallel import ContextShard, attention, chunk_positions
from megatron_infimed.model.packed_attention import attention_per_segment


def test_each_sample_is_cut_in_2n_chunks_and_rank_i_keeps_chunks_i_and_2n_minus_1_minus_i():
    bounds = [0, 8, 20]  # samples of 8 and 12 tokens, N = 2: chunks of 2 and 3
    assert chunk_positions(bounds, 2, 0) == [0, 1, 6, 7, 8, 9, 10, 17, 18, 19]
    assert chunk_positions(bounds, 2, 1) == [2, 3, 4, 5, 11, 12, 13, 14, 15, 16]


def test_the_ranks_chunks_cover_every_position_once():
    bounds = [0, 16, 24, 48]
    held = sorted(p for rank in range(4) for p in chunk_positions(bounds, 4, rank))
    assert held == list(range(48))


def test_a_segment_that_is_not_a_multiple_of_2n_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"segment \[8, 18\) of 10 tokens .* context-parallel size 2"):
        chunk_positions([0, 8, 18], 2, 0)


def test_packed_params_under_context_parallelism_give_the_padded_boundaries_as_both_real_and_padded():
    """TE's THD CP splits by ``cu_seqlens_*_padded``; giving the same boundaries as the real ones
    leaves it no padding between sequences to detect (TE #3331 misses padding at a pack's tail)."""
    from megatron_infimed.model.infimed import packed_seq_params

    params = packed_seq_params(torch.tensor([0, 8, 20]), 12, context_parallel=True)
    for name in ("cu_seqlens_q", "cu_seqlens_kv", "cu_seqlens_q_padded", "cu_seqlens_kv_padded"):
        assert getattr(params, name).tolist() == [0, 8, 20] and getattr(params, name).dtype == torch.int32
    assert packed_seq_params(torch.tensor([0, 8]), 8).cu_seqlens_q_padded is None


def _two_ranks(rank: int, store: str) -> None:
    from megatron_infimed.runtime import cpu_backend

    torch.set_num_threads(1)
    cpu_backend.enable()
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                                         timeout=timedelta(seconds=60))  # a missed collective fails, not hangs
    try:
        _check_attention(rank)
        _check_shared_images(rank)
        _check_images_are_divided(rank)
    finally:
        torch.distributed.destroy_process_group()


def _check_attention(rank: int) -> None:
    group = torch.distributed.group.WORLD
    g = torch.Generator().manual_seed(0)
    bounds = [0, 8, 20, 24]
    q, k, v = (torch.randn(24, heads, 8, generator=g) for heads in (4, 2, 2))
    weights = torch.randn(24, 4, 8, generator=g)
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = attention_per_segment(*full, torch.tensor(bounds), causal=True, scale=0.3)
    (expected * weights).sum().backward()

    shard = ContextShard.of(bounds, group, torch.device("cpu"))
    mine = [shard.take(t, 0).clone().requires_grad_() for t in (q, k, v)]
    out = attention(*mine, shard, causal=True, scale=0.3)
    torch.testing.assert_close(out, shard.take(expected.detach(), 0), rtol=1e-5, atol=1e-6)
    (out * shard.take(weights, 0)).sum().backward()
    for name, got, want in zip("qkv", mine, full):
        torch.testing.assert_close(got.grad, shard.take(want.grad, 0), rtol=1e-5, atol=1e-6, msg=f"grad of {name}")


def _check_shared_images(rank: int) -> None:
    """One image for two ranks: rank 1 encodes none, yet both see its embedding, and the encoder's
    gradient summed over the ranks (as DDP does) is the unsplit one, whichever rank uses it."""
    group = torch.distributed.group.WORLD
    shard = ContextShard.of([0, 4], group, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    images, weight = torch.randn(1, 6, generator=g), torch.randn(6, 3 * 2, generator=g)
    use = torch.randn(2, 2, 3, generator=g)  # how each rank's loss uses the embeddings

    def encode(w):
        return lambda part: (part @ w).view(-1, 3)  # 2 rows of width 3 per image

    w = weight.clone().requires_grad_()
    gathered = shard.gather_images(images, encode(w), rows=2, width=3, dtype=torch.float32, trainable=True)
    torch.testing.assert_close(gathered, (images @ weight).view(-1, 3))
    (gathered * use[rank]).sum().backward()
    grad = w.grad if w.grad is not None else torch.zeros_like(w)
    torch.distributed.all_reduce(grad)
    reference = weight.clone().requires_grad_()
    ((images @ reference).view(-1, 3) * use.sum(0)).sum().backward()
    torch.testing.assert_close(grad, reference.grad)


def _check_images_are_divided(rank: int) -> None:
    """Three images on two ranks: rank 0 encodes two, rank 1 one, and both get all three."""
    shard = ContextShard.of([0, 4], torch.distributed.group.WORLD, torch.device("cpu"))
    images = torch.arange(3.0).view(3, 1)
    encoded = []

    def encode(part):
        encoded.append(part.shape[0])
        return part.repeat(1, 2).view(-1, 1) + 10  # 2 rows of width 1 per image

    gathered = shard.gather_images(images, encode, rows=2, width=1, dtype=torch.float32, trainable=False)
    assert encoded == [[2], [1]][rank]
    assert gathered.view(-1).tolist() == [10.0, 10.0, 11.0, 11.0, 12.0, 12.0]


def test_split_attention_and_shared_image_encoding_equal_the_unsplit_results_on_two_ranks():
    with tempfile.TemporaryDirectory() as folder:  # a failing rank's traceback is in spawn's error
        torch.multiprocessing.spawn(_two_ranks, args=(os.path.join(folder, "store"),), nprocs=2)
