"""Packing: the online planner (property-based), pack assembly, loss weights, alignment padding.
The loss those weights feed is tested on training's own ``LossAccumulator`` (tests/training/test_loss.py)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_infimed.data.pack import IGNORE_INDEX, Pack
from megatron_infimed.data.pack_builder import PackLayout, build_pack, build_padded_batch, pad_multiple
from megatron_infimed.data.packing import ALGORITHMS, OnlinePacker
from megatron_infimed.data.preprocess import Sample

IMAGE_ID, IMAGE_TOKENS, PAD = 99, 4, 0


def synthetic_sample(sample_id: str, text: int, images: int = 0, trained: int | None = None) -> Sample:
    """``images`` image runs first, then ``text`` tokens whose last ``trained`` are assistant tokens."""
    ids = [IMAGE_ID] * (images * IMAGE_TOKENS) + [1000 + hash((sample_id, i)) % 500 for i in range(text)]
    trained = max(1, text // 2) if trained is None else trained
    is_trained = [False] * (len(ids) - trained) + [True] * trained
    labels = [ids[i + 1] if is_trained[i + 1] else IGNORE_INDEX for i in range(len(ids) - 1)] + [IGNORE_INDEX]
    pixels = torch.full((images, 3, 4, 4), len(sample_id) % 256, dtype=torch.uint8)
    return Sample(sample_id, "test", torch.tensor(ids), torch.tensor(labels), pixels)


def run_packer(lengths, capacity, buffer_size, algorithm):
    packer = OnlinePacker(capacity, buffer_size, algorithm)
    packs, max_held = [], 0
    for i, n in enumerate(lengths):
        packs += packer.add(i, n)
        max_held = max(max_held, packer.num_held)
    return packs + packer.flush(), max_held


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 64), min_size=1, max_size=300), buffer_size=st.integers(1, 40),
       algorithm=st.sampled_from(ALGORITHMS))
def test_planner_places_every_item_once_within_capacity_and_buffer(lengths, buffer_size, algorithm):
    packs, max_held = run_packer(lengths, 64, buffer_size, algorithm)
    placed = sorted(i for pack in packs for i in pack)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 64 for pack in packs)
    assert all(pack for pack in packs)
    assert max_held <= buffer_size


def test_planner_rejects_items_longer_than_capacity():
    with pytest.raises(ValueError, match="length 11 cannot be packed into capacity 10"):
        OnlinePacker(10, 4).add("x", 11)


def test_planner_keeps_partly_filled_packs_open_for_later_short_items():
    packer = OnlinePacker(capacity=10, buffer_size=4, refill=0.5)  # a round leaves at most 2 held
    assert [packer.add(x, n) for x, n in [("a", 7), ("b", 6), ("c", 2)]] == [[], [], []]
    assert packer.add("d", 2) == [["a", "c"]]  # fullest pack leaves; {b, d} (8/10) stays open
    assert packer.add("e", 2) == []
    assert packer.add("f", 5) == [["b", "d", "e"]]  # the later short item completed the open pack
    assert packer.flush() == [["f"]]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_planner_state_round_trip_gives_identical_following_packs(algorithm):
    lengths = [(i * 37) % 50 + 1 for i in range(400)]
    first = OnlinePacker(64, 32, algorithm)
    head = [p for i, n in enumerate(lengths[:150]) for p in first.add(i, n)]
    state = first.state_dict(lambda x: x)
    second = OnlinePacker(64, 32, algorithm)
    second.load_state_dict(state, lambda x: x)
    rest_a = [p for i, n in enumerate(lengths[150:], 150) for p in first.add(i, n)] + first.flush()
    rest_b = [p for i, n in enumerate(lengths[150:], 150) for p in second.add(i, n)] + second.flush()
    assert head and rest_a == rest_b


@settings(max_examples=40, deadline=None)
@given(spec=st.lists(st.tuples(st.integers(2, 30), st.integers(0, 2)), min_size=1, max_size=8),
       cp=st.sampled_from([1, 2]), fp8=st.booleans())
def test_pack_invariants_hold_for_random_mixes(spec, cp, fp8):
    samples = [synthetic_sample(f"s{i}", text, images) for i, (text, images) in enumerate(spec)]
    layout = PackLayout(context_parallel=cp, fp8_recipe="delayed" if fp8 else None, pad_id=PAD)
    pack = build_pack(samples, layout)
    pack.validate()
    cu = pack.cu_seqlens.tolist()
    assert len(cu) == len(samples) + 1 and pack.sample_ids == [s.sample_id for s in samples]
    assert pack.num_tokens % layout.pack_multiple == 0
    assert pack.num_real_tokens == sum(s.length for s in samples)
    for k, s in enumerate(samples):
        a, b = cu[k], cu[k + 1]
        assert (b - a) % layout.sample_multiple == 0
        assert pack.tokens[a:a + s.length].tolist() == s.input_ids.tolist()
        assert pack.position_ids[a:b].tolist() == list(range(b - a))  # positions restart per sample
        # labels never cross samples: each label is the next token of the same segment or ignored
        labels = pack.labels[a:b].tolist()
        for i, label in enumerate(labels):
            assert label == IGNORE_INDEX or (i + 1 < b - a and label == pack.tokens[a + i + 1])
        assert labels[-1] == IGNORE_INDEX
    assert int((pack.tokens == IMAGE_ID).sum()) == pack.images.shape[0] * IMAGE_TOKENS
    assert pack.images_per_sample == [s.num_images for s in samples]
    assert bool(((pack.loss_weights > 0) == (pack.labels != IGNORE_INDEX)).all())


def test_images_keep_their_order_and_stay_uint8_pixels_for_the_device_to_normalise():
    samples = [synthetic_sample("a", 5, images=1), synthetic_sample("bbb", 5, images=2)]
    pack = build_pack(samples, PackLayout())
    assert pack.images.dtype == torch.uint8
    assert [int(img[0, 0, 0]) for img in pack.images] == [1, 3, 3]


def test_fp8_padding_extends_the_last_segment_to_a_multiple_of_16():
    pack = build_pack([synthetic_sample("a", 10), synthetic_sample("b", 11)], PackLayout(fp8_recipe="delayed"))
    assert pack.cu_seqlens.tolist() == [0, 10, 32] and pack.num_padding == 11
    assert pack.position_ids[10:].tolist() == list(range(22))
    assert float(pack.loss_weights[21:].sum()) == 0 and bool((pack.labels[21:] == IGNORE_INDEX).all())


def test_context_parallel_pads_each_sample_to_twice_cp():
    pack = build_pack([synthetic_sample("a", 5), synthetic_sample("b", 9)], PackLayout(context_parallel=2))
    assert pack.cu_seqlens.tolist() == [0, 8, 20] and pack.num_padding == 6


def test_padded_batch_gives_every_sample_the_longest_length():
    samples = [synthetic_sample("a", 5), synthetic_sample("b", 12), synthetic_sample("c", 7)]
    pack = build_padded_batch(samples, PackLayout())
    assert pack.cu_seqlens.tolist() == [0, 12, 24, 36] and pack.num_padding == 36 - 24
    assert pack.tokens[:5].tolist() == samples[0].input_ids.tolist() and bool((pack.tokens[5:12] == PAD).all())


@pytest.mark.parametrize("mode, normaliser", [
    ("token", lambda n: sum(n)), ("sample", lambda n: len(n)), ("square", lambda n: sum(math.sqrt(x) for x in n)),
])
def test_sum_of_loss_weights_is_the_documented_normaliser(mode, normaliser):
    trained = [1, 4, 9, 25]
    samples = [synthetic_sample(f"s{i}", 30, trained=n) for i, n in enumerate(trained)]
    pack = build_pack(samples, PackLayout(loss_weighting=mode))
    assert float(pack.loss_weights.sum()) == pytest.approx(normaliser(trained))


def test_sample_mode_weighs_every_sample_equally():
    samples = [synthetic_sample("short", 10, trained=2), synthetic_sample("long", 60, trained=40)]
    pack = build_pack(samples, PackLayout(loss_weighting="sample"))
    cu = pack.cu_seqlens.tolist()
    assert [float(pack.loss_weights[cu[k]:cu[k + 1]].sum()) for k in range(2)] == pytest.approx([1.0, 1.0])


def test_square_weights_are_inverse_sqrt_of_trainable_tokens():
    pack = build_pack([synthetic_sample("a", 20, trained=16)], PackLayout(loss_weighting="square"))
    assert sorted(set(pack.loss_weights.tolist())) == [0.0, 0.25]


def test_concat_of_packs_validates_for_micro_batches():
    packs = [build_pack([synthetic_sample("a", 5, 1)], PackLayout()), build_pack([synthetic_sample("b", 7)],
                                                                                 PackLayout())]
    merged = Pack.concat(packs)
    merged.validate()
    assert merged.cu_seqlens.tolist() == [0, 9, 16] and merged.sample_ids == ["a", "b"]


def test_unknown_loss_weighting_is_refused():
    with pytest.raises(ValueError, match="unknown loss weighting 'mean'"):
        PackLayout(loss_weighting="mean")


@pytest.mark.parametrize("tp, sp, cp, recipe, multiple", [
    (1, False, 1, None, 1), (1, False, 2, None, 4), (1, False, 1, "delayed", 16), (1, False, 1, "mxfp8", 32),
    (2, True, 1, None, 2), (2, False, 2, None, 4), (4, True, 2, None, 8), (2, True, 2, "mxfp8", 128),
    (8, True, 1, "tensorwise", 128), (2, False, 3, "delayed", 48), (1, False, 2, "mxfp8", 64),
])
def test_the_pack_multiple_is_one_function_of_tp_sp_cp_and_the_fp8_recipe(tp, sp, cp, recipe, multiple):
    """Each rank's share of the pack (1/cp, then 1/tp under SP) is FP8-aligned, and every sample
    splits into 2·cp chunks."""
    assert pad_multiple(tp, sp, cp, recipe) == multiple
    assert PackLayout(tensor_parallel=tp, sequence_parallel=sp, context_parallel=cp,
                      fp8_recipe=recipe).pack_multiple == multiple


def test_mxfp8_packs_are_multiples_of_32():
    pack = build_pack([synthetic_sample("a", 10), synthetic_sample("b", 11)], PackLayout(fp8_recipe="mxfp8"))
    assert pack.num_tokens == 32 and pack.num_padding == 11
