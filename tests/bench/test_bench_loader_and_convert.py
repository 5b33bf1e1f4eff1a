"""loader and convert at tiny sizes: real VQA-RAD images, a small checkpoint."""

import pytest

pytestmark = pytest.mark.slow  # DataLoader worker processes; convert spawns a Python process and takes ~6 s


def test_loader_json_counts_the_same_samples_on_both_sides(bench_json, vqa_rad_dir, tmp_path):
    out = bench_json("loader", "--vqa-rad", str(vqa_rad_dir), "--samples", "12", "--repeats", "1",
                     "--workdir", str(tmp_path))
    assert out["samples"] + out["dropped_by_curation"] == 12 and out["samples"] > 0
    assert out["samples_per_s"] > 0 and out["baseline_samples_per_s"] > 0
    assert out["ratio"] == pytest.approx(out["samples_per_s"] / out["baseline_samples_per_s"])
    assert out["image_tokens"] == 144 and out["data"].startswith("VQA-RAD")


def test_convert_json_reports_throughput_and_peak_memory_of_the_export(bench_json, tmp_path):
    out = bench_json("convert", "--gb", "0.01", "--hidden-size", "64", "--repeats", "1", "--workdir", str(tmp_path))
    assert out["output_gb"] == pytest.approx(out["model_gb"], rel=0.01)  # + safetensors headers
    assert out["ratio"] == pytest.approx(out["gb_per_s"] / out["copy_gb_per_s"])
    assert out["peak_rss_gb"] >= out["baseline_rss_gb"] > 0
    assert out["largest_shard_gb"] <= out["output_gb"]
