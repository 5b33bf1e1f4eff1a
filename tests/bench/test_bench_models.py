"""train, attention and generate at tiny model sizes (one repetition each)."""

import pytest

from megatron_infimed.bench.attention import ideal_speedup


def test_ideal_speedup_is_the_square_of_the_pack_over_the_sum_of_squares():
    assert ideal_speedup([2, 2]) == 2.0
    assert ideal_speedup([8190]) == 1.0


def test_attention_json_reports_ideal_speedup_exactly_from_its_segments(bench_json):
    out = bench_json("attention", "--seq-length", "1024", "--heads", "2", "--head-dim", "16", "--repeats", "1")
    segments = out["segment_lengths"]
    assert sum(segments) == out["tokens"] <= 1024 and out["tokens"] >= 0.99 * 1024
    assert out["ideal_speedup"] == sum(segments) ** 2 / sum(n * n for n in segments)
    assert out["packed_ms"] > 0 and out["dense_ms"] > 0
    assert out["speedup"] == pytest.approx(out["dense_ms"] / out["packed_ms"])


def test_train_json_compares_the_same_real_tokens_on_three_sides(bench_json):
    out = bench_json("train", "--samples", "4", "--seq-length", "512", "--hidden-size", "64",
                     "--num-layers", "1", "--micro-batch-size", "2", "--repeats", "1")
    for key in ("packed_tokens_per_s", "padded_tokens_per_s", "hf_padded_tokens_per_s"):
        assert out[key] > 0
    assert out["ratio_vs_padded"] == pytest.approx(out["packed_tokens_per_s"] / out["padded_tokens_per_s"])
    assert out["ratio_vs_hf"] == pytest.approx(out["packed_tokens_per_s"] / out["hf_padded_tokens_per_s"])
    assert out["slots"]["packed"] == out["real_tokens"] <= out["slots"]["padded"] == out["slots"]["hf_padded"]
    assert out["image_token_reduction_speedup"] > 0


def test_generate_json_reports_kv_speedup_and_identical_tokens(bench_json):
    out = bench_json("generate", "--new-tokens", "4", "--hidden-size", "64", "--num-layers", "1",
                     "--prompt-text-tokens", "4", "--repeats", "1")
    assert out["identical_tokens"] is True and out["new_tokens"] == 4
    assert out["kv_speedup"] == pytest.approx(out["kv_tokens_per_s"] / out["recompute_tokens_per_s"])
