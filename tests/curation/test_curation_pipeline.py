"""prepare(): bad input never crashes and is counted, outputs follow the shard contract,
runs are deterministic, atomic and resumable."""

import json
import os
import subprocess
import sys
import tarfile

import pytest
from curation_factories import GOOD_QUESTIONS, bad_input_dataset, llava, save, textured, write_jsonl

from megatron_infimed.curation import PrepareConfig, prepare, read_outcomes
from megatron_infimed.curation.shards import ShardStore


def run(tmp_path, input_path, out="out", **kwargs):
    config = PrepareConfig(format="llava", input=str(input_path), out=str(tmp_path / out), progress=False, **kwargs)
    return prepare(config)


def tar_members(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def shard_bytes(out):
    shards = sorted(os.listdir(os.path.join(out, "shards")))
    return {name: open(os.path.join(out, "shards", name), "rb").read() for name in shards}


@pytest.fixture
def bad_input(tmp_path):
    return bad_input_dataset(tmp_path)


def test_every_bad_input_class_is_dropped_with_its_named_reason(tmp_path, bad_input):
    path, expected = bad_input
    run(tmp_path, path)
    outcomes = {line["id"]: (line["reasons"] or [None])[0] for line in read_outcomes(str(tmp_path / "out"))}
    assert outcomes == expected


def test_dropped_malformed_line_names_its_line_number(tmp_path, bad_input):
    run(tmp_path, bad_input[0])
    (line,) = [ln for ln in read_outcomes(str(tmp_path / "out")) if ln["reasons"] == ["parse/malformed_json"]]
    assert "line 12" in line["detail"]


def test_report_counts_reconcile_and_name_every_reason(tmp_path, bad_input):
    path, expected = bad_input
    report = run(tmp_path, path)
    assert report["total"] == len(expected) == report["kept"] + sum(report["dropped"].values())
    assert report["kept"] == len(GOOD_QUESTIONS)
    assert set(report["dropped"]) == {r for r in expected.values() if r}
    on_disk = json.loads((tmp_path / "out" / "quality_report.json").read_text())
    assert on_disk["total"] == report["total"] and on_disk["dropped"] == report["dropped"]


def test_kept_samples_are_written_per_the_shard_contract(tmp_path, bad_input):
    run(tmp_path, bad_input[0], shard_size=4)
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [4, 2]
    assert manifest["total_samples"] == 6 == len(manifest["samples"])
    names = [name for name, _ in tar_members(out / "shards" / "shard-000000.tar")]
    first = manifest["samples"][0]
    assert names[:2] == [f"{first['key']}.json", f"{first['key']}.png"]
    assert all("." not in s["key"] for s in manifest["samples"])
    sample = json.loads(tar_members(out / "shards" / "shard-000000.tar")[0][1])
    assert sample["id"] == "good-0" and sample["source"] == "llava" and sample["image_members"] == ["png"]
    assert sample["conversations"][0]["value"].count("<image>") == 1
    assert sample["quality"]["decision"] == "keep" and set(sample["quality"]["scores"]) == {
        "image_quality", "text_quality", "image_text_consistency", "medical_relevance", "answer_reliability"}
    assert first["text_tokens_estimate"] == -(-first["text_chars"] // 4) and first["images"] == 1


def test_multi_image_sample_has_numbered_members(tmp_path):
    save(textured(seed=1), tmp_path / "a.png")
    textured(seed=2).convert("RGB").save(tmp_path / "b.jpg", format="JPEG")
    row = {"id": "two", "image": ["a.png", "b.jpg"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nCompare the two CT scans."},
        {"from": "gpt", "value": "The lesion grew."}]}
    run(tmp_path, write_jsonl(tmp_path / "d.jsonl", [row]))
    members = dict(tar_members(tmp_path / "out" / "shards" / "shard-000000.tar"))
    key = "00000000-two"
    assert sorted(members) == [f"{key}.0.png", f"{key}.1.jpg", f"{key}.json"]
    assert json.loads(members[f"{key}.json"])["image_members"] == ["0.png", "1.jpg"]
    assert members[f"{key}.1.jpg"] == (tmp_path / "b.jpg").read_bytes()


def test_image_size_stores_letterboxed_model_ready_images(tmp_path, bad_input):
    from io import BytesIO

    from PIL import Image

    run(tmp_path, bad_input[0], image_size=32)
    members = tar_members(tmp_path / "out" / "shards" / "shard-000000.tar")
    sizes = {Image.open(BytesIO(data)).size for name, data in members if name.endswith(".png")}
    assert sizes == {(32, 32)}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["image_size"] == 32


def test_same_input_and_seed_give_byte_identical_shards(tmp_path, bad_input):
    run(tmp_path, bad_input[0], out="a", shard_size=4, shuffle=True, seed=3)
    run(tmp_path, bad_input[0], out="b", shard_size=4, shuffle=True, seed=3)
    first, second = shard_bytes(tmp_path / "a"), shard_bytes(tmp_path / "b")
    assert list(first) == ["shard-000000.tar", "shard-000001.tar"] and first == second
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


@pytest.mark.slow  # a pool of worker processes
def test_two_workers_write_the_same_bytes_as_one(tmp_path, bad_input):
    run(tmp_path, bad_input[0], out="one", shard_size=4)
    run(tmp_path, bad_input[0], out="two", shard_size=4, workers=2)
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")


def test_tar_members_carry_no_time_or_owner(tmp_path, bad_input):
    run(tmp_path, bad_input[0])
    with tarfile.open(tmp_path / "out" / "shards" / "shard-000000.tar") as tar:
        assert {(m.mtime, m.uid, m.gid, m.mode) for m in tar.getmembers()} == {(0, 0, 0, 0o444)}


def test_interrupted_run_resumes_to_the_same_output(tmp_path, bad_input, monkeypatch):
    run(tmp_path, bad_input[0], out="clean", shard_size=2)
    original = ShardStore.write_shard
    calls = []

    def crash_on_second_shard(self, index, samples):
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        original(self, index, samples)

    monkeypatch.setattr(ShardStore, "write_shard", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, bad_input[0], out="resumed", shard_size=2)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    monkeypatch.setattr(ShardStore, "write_shard", original)
    report = run(tmp_path, bad_input[0], out="resumed", shard_size=2)
    assert shard_bytes(tmp_path / "resumed") == shard_bytes(tmp_path / "clean")
    assert report == json.loads((tmp_path / "clean" / "quality_report.json").read_text()) | {}
    assert (tmp_path / "resumed" / "manifest.json").read_bytes() == (tmp_path / "clean" / "manifest.json").read_bytes()


def test_half_written_shard_never_looks_complete(tmp_path, bad_input, monkeypatch):
    from megatron_infimed.curation import shards

    writer_class = shards.TarWriter
    written = []

    def crash_midway(self, obj):
        written.append(obj["__key__"])
        if len(written) == 3:
            raise KeyboardInterrupt("killed while writing")
        return original_write(self, obj)

    original_write = writer_class.write
    monkeypatch.setattr(writer_class, "write", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, bad_input[0], shard_size=4)
    shard_files = sorted(os.listdir(tmp_path / "out" / "shards"))
    assert shard_files == [".shard-000000.tar.partial"]  # nothing named shard-*.tar
    assert not (tmp_path / "out" / "manifest.json").exists()
    monkeypatch.setattr(writer_class, "write", original_write)
    run(tmp_path, bad_input[0], shard_size=4)
    assert sorted(os.listdir(tmp_path / "out" / "shards")) == ["shard-000000.tar", "shard-000001.tar"]


def test_rerun_with_other_settings_is_refused_unless_overwrite(tmp_path, bad_input):
    run(tmp_path, bad_input[0], shard_size=4)
    with pytest.raises(ValueError, match="other settings.*shard_size"):
        run(tmp_path, bad_input[0], shard_size=5)
    assert run(tmp_path, bad_input[0], shard_size=5, overwrite=True)["kept"] == 6


def test_exact_and_near_duplicates_are_dropped_and_first_copy_kept(tmp_path):
    from PIL import Image

    save(textured((96, 96), seed=5), tmp_path / "a.png")
    (tmp_path / "copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    Image.open(tmp_path / "a.png").resize((90, 90), Image.Resampling.BICUBIC).save(tmp_path / "smaller.png")
    rows = [llava("orig", "a.png"), llava("copy", "copy.png"), llava("resized", "smaller.png"),
            llava("other-question", "a.png", question="Is the spleen enlarged?")]
    run(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows))
    outcomes = {ln["id"]: ln["reasons"] for ln in read_outcomes(str(tmp_path / "out"))}
    assert outcomes == {"orig": [], "copy": ["duplicate/exact"], "resized": ["duplicate/near"], "other-question": []}


def test_general_domain_scores_but_does_not_filter_on_medical_relevance(tmp_path):
    save(textured(seed=1), tmp_path / "a.png")
    rows = [llava("g", "a.png", question="What colour is the square?", answer="red")]
    assert run(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows), out="med")["dropped"] == {
        "medical_relevance/no_clinical_terms": 1}
    report = run(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows), out="gen", domain="general")
    assert report["kept"] == 1 and report["dimensions"]["medical_relevance"]["mean"] == 0.0


def test_report_markdown_and_one_histogram_per_dimension(tmp_path, bad_input):
    run(tmp_path, bad_input[0])
    out = tmp_path / "out"
    assert sorted(os.listdir(out / "report")) == sorted(f"hist_{d}.png" for d in (
        "image_quality", "text_quality", "image_text_consistency", "medical_relevance", "answer_reliability"))
    assert (out / "report" / "hist_text_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "quality_report.md").read_text()
    assert "| load/decompression_bomb | 1 |" in markdown and "kept: **6**" in markdown


@pytest.mark.slow  # a fresh Python subprocess
def test_curation_runs_without_megatron_or_a_distributed_world(tmp_path, bad_input):
    code = (f"import sys, torch; from megatron_infimed.curation import prepare, PrepareConfig; "
            f"prepare(PrepareConfig(format='llava', input={bad_input[0]!r}, out={str(tmp_path / 'o')!r}, "
            f"progress=False)); print(sorted(m for m in ('megatron.core',) if m in sys.modules), "
            f"torch.distributed.is_initialized())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] False"
