"""``infimed-bench packing`` and its baselines: fields and fills, never a timing (the benchmark measures
time; docs/benchmarks.md has the figures)."""

import pytest

from megatron_infimed.bench.length_mix import MixSample, draw_samples, fit, load_mix
from megatron_infimed.bench.packing import greedy_flush_packs, online_packs, packed_fill, padded_fill
from megatron_infimed.bench.record_length_mix import long_tailed_lengths
from megatron_infimed.data.packing import DEFAULT_ALGORITHM, OnlinePacker

LONG_TAIL_SAMPLES = 20000


def test_packing_json_has_the_issue_fields_with_fills_in_range(bench_json):
    out = bench_json("packing", "--samples", "3000", "--seq-length", "4096", "--repeats", "1")
    assert out["benchmark"] == "packing" and out["seq_length"] == 4096 and out["samples"] == 3000
    for fill in (out["fill_ratio"], *out["baselines"].values()):
        assert 0 < fill <= 1
    assert set(out["baselines"]) == {"pad_to_longest", "greedy_knapsack"}
    assert out["us_per_sample"] > 0


def test_online_packer_fills_at_least_as_well_as_greedy_on_the_shipped_mix(bench_json):
    out = bench_json("packing", "--samples", "5000", "--seq-length", "8192", "--repeats", "1")
    assert out["fill_ratio"] >= out["baselines"]["greedy_knapsack"] > out["baselines"]["pad_to_longest"]


@pytest.mark.parametrize("seq_length", [4096, 8192])
def test_online_packing_beats_greedy_flush_and_reaches_99_percent_on_the_long_tail(seq_length):
    lengths = long_tailed_lengths(LONG_TAIL_SAMPLES, seq_length)
    ours = packed_fill(online_packs(lengths, seq_length, 1024), seq_length)
    greedy = packed_fill(greedy_flush_packs(lengths, seq_length, 1024), seq_length)
    assert ours >= 0.99 and ours > greedy


@pytest.mark.parametrize("seq_length", [4096, 8192])
def test_default_algorithm_bfd_packs_at_least_as_full_as_ffd(seq_length):
    lengths = long_tailed_lengths(LONG_TAIL_SAMPLES, seq_length, seed=1)

    def fill(algorithm):
        packer = OnlinePacker(seq_length, 1024, algorithm)
        return packed_fill([p for n in lengths for p in packer.add(n, n)] + packer.flush(), seq_length)

    assert DEFAULT_ALGORITHM == "bfd" and fill("bfd") >= fill("ffd") - 1e-4


def test_greedy_flush_emits_every_pack_of_a_buffer_before_reading_the_next():
    # buffer [6, 5] → two packs (nothing fits beside 6), then buffer [4] alone: 5 is not topped up
    assert greedy_flush_packs([6, 5, 4], capacity=10, buffer_size=2) == [[6], [5], [4]]


def test_pad_to_longest_fill_counts_every_row_at_the_longest_length():
    # batches [4, 2] and [3]: real 9 tokens, slots 2*4 + 1*3 = 11
    assert padded_fill([4, 2, 3], micro_batch_size=2) == pytest.approx(9 / 11)


def test_shipped_mix_states_its_provenance_and_real_vqa_rad_counts():
    mix = load_mix()
    names = [c["name"] for c in mix["components"]]
    assert names == ["vqa_rad_single_turn", "vqa_rad_multi_turn", "long_tail_instruction"]
    assert len(mix["components"][0]["samples"]) == 2248 and len(mix["components"][1]["samples"]) == 314
    assert "NOT measured" in mix["components"][2]["source"]
    assert all(c["source"] for c in mix["components"]) and "Qwen3" in mix["tokenizer"]


def test_drawn_samples_fit_the_sequence_length_and_keep_whole_images():
    samples = draw_samples(2000, seq_length=512, tokens_per_image=144, seed=3)
    assert all(0 < s.length(144) <= 512 for s in samples)
    assert fit(MixSample(10, 5), seq_length=400, tokens_per_image=144) == MixSample(10, 2)
