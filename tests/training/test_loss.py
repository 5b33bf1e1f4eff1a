"""The step's loss, on training's own ``LossAccumulator``: ``Σ w·ce / Σ w`` over the micro-batches of a
step, with ``w`` the loss weights the loader put into each pack (``data/pack_builder.py``)."""

import pytest
import torch

from megatron_infimed.data.pack import IGNORE_INDEX
from megatron_infimed.data.pack_builder import PackLayout, build_pack
from megatron_infimed.data.preprocess import Sample
from megatron_infimed.training.step import LossAccumulator


def sample(sample_id: str, length: int, trained: int) -> Sample:
    """``length`` text tokens whose last ``trained`` labels are trainable (already shifted)."""
    ids = torch.arange(1000, 1000 + length)
    labels = torch.full((length,), IGNORE_INDEX)
    labels[length - 1 - trained:length - 1] = ids[length - trained:]
    return Sample(sample_id, "test", ids, labels, torch.empty(0, 3, 4, 4, dtype=torch.uint8))


def step_loss(packs, per_token_ce) -> float:
    """Every micro-batch through ``loss_func`` as the schedule calls it; the step's loss is the ratio."""
    accumulator = LossAccumulator()
    for pack, ce in zip(packs, per_token_ce):
        accumulator.loss_func(pack.loss_weights, ce.view(1, -1))
    return float(accumulator.loss_sum / accumulator.weight_sum)


def per_sample_ce(packs, per_token_ce) -> list[torch.Tensor]:
    """Cross entropy of each sample's trainable tokens, in pack order."""
    out = []
    for pack, ce in zip(packs, per_token_ce):
        cu = pack.cu_seqlens.tolist()
        for a, b in zip(cu[:-1], cu[1:]):
            out.append(ce[a:b][pack.labels[a:b] != IGNORE_INDEX])
    return out


@pytest.fixture
def two_micro_batches():
    samples = [sample(f"s{i}", 8 + 3 * i, trained=3 + 2 * i) for i in range(4)]
    torch.manual_seed(0)

    def build(mode: str):
        layout = PackLayout(loss_weighting=mode)
        packs = [build_pack(samples[:2], layout), build_pack(samples[2:], layout)]
        return packs, [torch.rand(p.num_tokens) for p in packs]  # stand-in per-token cross entropy

    return build


def test_token_mode_step_loss_is_the_mean_over_all_trainable_tokens_of_the_step(two_micro_batches):
    packs, ce = two_micro_batches("token")
    assert step_loss(packs, ce) == pytest.approx(float(torch.cat(per_sample_ce(packs, ce)).mean()))


def test_sample_mode_step_loss_is_the_mean_over_samples_of_their_mean_token_loss(two_micro_batches):
    packs, ce = two_micro_batches("sample")
    expected = torch.stack([c.mean() for c in per_sample_ce(packs, ce)]).mean()
    assert step_loss(packs, ce) == pytest.approx(float(expected))


def test_loss_func_returns_the_weighted_sum_the_trained_token_count_and_the_logged_pair(two_micro_batches):
    packs, ce = two_micro_batches("square")
    pack, tokens = packs[0], ce[0].clone().requires_grad_()
    loss, count, logged = LossAccumulator().loss_func(pack.loss_weights, tokens)
    weighted = float((pack.loss_weights * ce[0]).sum())
    assert float(loss.detach()) == pytest.approx(weighted)
    assert int(count) == int((pack.labels != IGNORE_INDEX).sum())
    assert logged["loss"].tolist() == pytest.approx([weighted, float(pack.loss_weights.sum())])
    loss.backward()  # megatron backpropagates the weighted sum; the step divides the gradients by Σ w later
    assert torch.equal(tokens.grad, pack.loss_weights)


def test_reset_starts_the_next_step_from_zero(two_micro_batches):
    packs, ce = two_micro_batches("token")
    accumulator = LossAccumulator()
    accumulator.loss_func(packs[0].loss_weights, ce[0])
    accumulator.reset()
    assert float(accumulator.loss_sum) == 0.0 and float(accumulator.weight_sum) == 0.0
