"""The demo in its fast mode: every stage of the pipeline runs and the report is complete
(learning itself is checked by the full demo, the README's main command)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    # A relative --workdir, as a user types it.
    result = subprocess.run([sys.executable, "-m", "megatron_infimed.cli.demo", "--fast", "--workdir", "demo"],
                            capture_output=True, text=True, timeout=900, cwd=workdir,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    workdir = workdir / "demo"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, json.loads((workdir / "results.json").read_text())


def test_results_hold_every_stage_and_both_test_sets(demo):
    _, results = demo
    assert list(results["stages"]) == ["pretrain", "stage1", "stage2", "stage3"]
    for stage in results["stages"].values():
        for split in ("in_distribution", "shifted"):
            assert stage[split]["n"] > 0, "every test question must be answered, none skipped"
            assert 0.0 <= stage[split]["closed_accuracy"] <= 1.0
    assert 0.5 <= results["majority_closed_accuracy"] <= 1.0


def test_each_stage_starts_from_the_previous_checkpoint(demo):
    workdir, _ = demo
    import yaml

    previous = None
    for stage in ("pretrain", "stage1", "stage2", "stage3"):
        config = yaml.safe_load((workdir / "configs" / f"{stage}.yaml").read_text())
        expected = None if previous is None else str(workdir / "checkpoints" / previous)
        assert config.get("pretrained_checkpoint") == expected
        assert (workdir / "checkpoints" / stage / "latest_checkpointed_iteration.txt").is_file()
        previous = stage


def test_curation_report_and_export_are_present(demo):
    workdir, results = demo
    for name in ("general", "medical", "shifted"):
        report = json.loads((workdir / "prepared" / name / "quality_report.json").read_text())
        assert report["total"] == report["kept"] + sum(report["dropped"].values())
    assert (workdir / "hf_model" / "config.json").is_file()
    # The SentencePiece tokenizer was converted, so transformers' AutoProcessor answered.
    assert (workdir / "hf_model" / "tokenizer.json").is_file()
    assert isinstance(results["export"]["answer"], str)


def test_report_and_loss_curve_are_written(demo):
    workdir, _ = demo
    report = (workdir / "report.md").read_text()
    assert "| stage3 |" in report and "majority-answer baseline" in report
    assert (workdir / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
