"""Ingest of the real VQA-RAD release (shared/data/vqa_rad): split sizes and reconciled counts."""

import json

import pytest

from megatron_infimed.curation import PrepareConfig, prepare


# The train split (~2 s) is the slow tier's; the test split runs the same path in the fast one.
@pytest.mark.parametrize("split, records", [pytest.param("train", 1797, marks=pytest.mark.slow), ("test", 451)])
def test_vqa_rad_split_is_ingested_and_counts_reconcile(vqa_rad_dir, tmp_path, split, records):
    report = prepare(PrepareConfig(format="vqa_rad", input=str(vqa_rad_dir / "VQA_RAD_Dataset_Public.json"),
                                   out=str(tmp_path / split), split=split, progress=False))
    assert report["total"] == records and report["excluded"] == 2248 - records
    assert report["total"] == report["kept"] + sum(report["dropped"].values())
    assert report["kept"] >= 0.97 * records  # real data: only a handful of genuinely doubtful records drop
    assert not any(reason.startswith(("load/", "parse/")) for reason in report["dropped"])
    manifest = json.loads((tmp_path / split / "manifest.json").read_text())
    assert manifest["total_samples"] == report["kept"] == sum(s["samples"] for s in manifest["shards"])
