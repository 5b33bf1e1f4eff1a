"""The FLOPs formula, checked against a hand computation for the tiny preset."""

from megatron_infimed.config.presets import get_preset
from megatron_infimed.training.flops import decoder_forward_flops, training_flops, vision_forward_flops

TINY = get_preset("tiny")  # hidden 64, ffn 128, 2 layers, 4 heads, 2 groups, head dim 16, vocab 2048


def test_decoder_flops_by_hand():
    lengths = [3, 5]
    qkv = 2 * 64 * (4 + 2 * 2) * 16
    out = 2 * 4 * 16 * 64
    mlp = 3 * 2 * 64 * 128
    pairs = 3 * 4 / 2 + 5 * 6 / 2
    attention = 2 * 2 * 4 * 16 * pairs
    logits = 2 * 64 * 2048 * 8
    assert decoder_forward_flops(TINY, lengths) == 2 * ((qkv + out + mlp) * 8 + attention) + logits


def test_packing_costs_less_attention_than_one_long_sequence():
    assert decoder_forward_flops(TINY, [100, 100]) < decoder_forward_flops(TINY, [200])


def test_training_is_three_forward_passes():
    forward = decoder_forward_flops(TINY, [10]) + vision_forward_flops(TINY, 2)
    assert training_flops(TINY, [10], 2) == 3 * forward


def test_fewer_image_tokens_cost_less_projector_work():
    full = TINY.with_overrides({"reduction.kind": "none"})
    assert vision_forward_flops(TINY, 1) < vision_forward_flops(full, 1)
