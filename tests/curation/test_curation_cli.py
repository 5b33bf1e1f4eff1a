"""infimed-prepare: flags reach prepare(); bad invocations fail before any work."""

import json

import pytest
from curation_factories import bad_input_dataset

from megatron_infimed.cli.prepare import main


def test_cli_writes_shards_and_prints_a_summary(tmp_path, capsys):
    path, _ = bad_input_dataset(tmp_path)
    assert main(["--format", "llava", "--input", path, "--out", str(tmp_path / "o"), "--shard-size", "4",
                 "--image-size", "32", "--no-progress"]) == 0
    assert "kept 6 of 16 records (10 dropped)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["image_size"] == 32 and len(manifest["shards"]) == 2


def test_cli_missing_input_fails_before_creating_output(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--format", "vqa_rad", "--input", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "missing.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_unknown_format_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--format", "coco", "--input", "x.json", "--out", str(tmp_path / "o")])
    assert "invalid choice: 'coco'" in capsys.readouterr().err


def test_cli_synthetic_generates_then_curates(tmp_path, capsys):
    assert main(["--format", "synthetic", "--out", str(tmp_path / "o"), "--synthetic-n", "30",
                 "--distribution", "shifted", "--defect-rate", "0.2", "--synthetic-image-size", "64",
                 "--no-progress"]) == 0
    report = json.loads((tmp_path / "o" / "quality_report.json").read_text())
    assert report["total"] == 30 and report["kept"] == 24 and report["source"] == "synthetic-shifted"
