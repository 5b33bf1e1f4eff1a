"""Under pipeline parallelism only the first stage reads; later stages receive the packs (all but
the images) before each step. Training on shards gives what one rank gives, and resume works."""

import json

import pytest
from trainrun import read_metrics, shard_flags, torchrun

pytestmark = pytest.mark.slow


def common(shard_dataset, run_dir, *extra):
    # The learning-rate schedule spans 4 iterations whatever --train-iters says, so a run stopped
    # at 2 and continued to 4 follows the same schedule as one run of 4.
    return [*shard_flags(*shard_dataset, num_epochs=1), "--seq-length", "192", "--global-batch-size", "2",
            "--lr", "3e-3", "--lr-decay-iters", "4", "--seed", "9", "--log-interval", "1", "--run-dir", str(run_dir),
            *extra]


def ledger(run_dir):
    entries = [json.loads(line) for line in (run_dir / "samples-dp0.jsonl").read_text().splitlines()]
    return {e["iteration"]: e["sample_ids"] for e in entries}


@pytest.fixture(scope="module")
def one_rank(shard_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("tp1") / "run"
    torchrun(1, *common(shard_dataset, run, "--train-iters", "4"))
    return read_metrics(run), ledger(run)


def test_pipeline_stages_train_on_the_first_stages_packs_as_one_rank_does(shard_dataset, tmp_path, one_rank):
    reference, reference_ledger = one_rank
    torchrun(2, *common(shard_dataset, tmp_path / "run", "--train-iters", "4", "--pipeline-model-parallel-size", "2"))
    records = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    for ref, got in zip(reference, records):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
        assert got["tokens"] == ref["tokens"]
        # The loader's counters reach the last stage, which logs them.
        assert {k: v for k, v in got.items() if k.startswith("data/")} == \
            {k: v for k, v in ref.items() if k.startswith("data/")}
    assert ledger(tmp_path / "run") == reference_ledger


def test_a_pipeline_run_resumes_its_loader_from_the_first_stage(shard_dataset, tmp_path, one_rank):
    reference, reference_ledger = one_rank
    ckpt = tmp_path / "ckpt"
    pp2 = ["--pipeline-model-parallel-size", "2", "--save", str(ckpt), "--load", str(ckpt), "--save-interval", "2"]
    torchrun(2, *common(shard_dataset, tmp_path / "run", "--train-iters", "2", *pp2))
    torchrun(2, *common(shard_dataset, tmp_path / "run", "--train-iters", "4", *pp2))
    records = {r["iteration"]: r for r in read_metrics(tmp_path / "run")}
    assert sorted(records) == [1, 2, 3, 4]
    for ref in reference:
        assert records[ref["iteration"]]["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert ledger(tmp_path / "run") == reference_ledger
