"""Elastic resume: a checkpoint saved at one data-parallel size resumes at another without
``--reset-data-state``, and the run still trains each sample of an epoch once before any again
(real shards: the saved ranks' packers and unread rest of the epoch are resharded), or, on
--mock-data, continues at the first micro-batch the saved run had not consumed."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from trainrun import read_metrics, shard_flags, torchrun

from megatron_infimed.checkpoint.layout import iteration_dir, write_tracker
from megatron_infimed.config.presets import get_preset
from megatron_infimed.training.mock_data import MockDataIterator

PACKING_BUFFER = 16
COMMON = ["--seq-length", "192", "--global-batch-size", "2", "--lr", "3e-3", "--seed", "5", "--log-interval", "1"]
MOCK = ["--preset", "tiny", "--mock-data", "--seq-length", "192", "--global-batch-size", "4", "--lr", "2e-3",
        "--seed", "11", "--log-interval", "1"]


def ledger(run_dir: Path) -> dict[int, list[str]]:
    """iteration → the samples every data-parallel rank trained in it, rank by rank."""
    trained: dict[int, list[str]] = {}
    for path in sorted(run_dir.glob("samples-dp*.jsonl"), key=lambda p: int(p.stem[len("samples-dp"):])):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            trained.setdefault(entry["iteration"], []).extend(entry["sample_ids"])
    return trained


def held_samples(checkpoint: Path, iteration: int) -> int:
    """Samples the saved ranks' packers held (read, not yet trained) at ``iteration``: saved apart from
    each rank's stream state (``dp{R}-held.pt``), which counts them."""
    total = 0
    folder = iteration_dir(checkpoint, iteration) / "loader"
    for path in folder.glob("dp*-held.pt"):
        held = torch.load(path, weights_only=True)
        packer = held["packer"]
        count = len(packer["pending"]) + sum(len(items) for *_, items in packer["open"])
        count += sum(map(len, held["ready"])) + len(held["carry"])
        assert "packer" not in (small := torch.load(folder / f"dp{held['dp_rank']}.pt", weights_only=True))
        assert small["held_samples"] == count
        total += count
    return total


@pytest.mark.slow
def test_real_shards_resume_from_dp1_at_dp2_and_back_training_the_epoch_once(shard_dataset, tmp_path):
    """DP=1 for 2 iterations, DP=2 for 2 more, DP=1 (with 2 workers) to the next epoch: every
    sample of the 48 is trained, each once before any is trained again, up to what the packers
    reorder (they hold at most PACKING_BUFFER samples per rank)."""
    dataset, tokenizer = shard_dataset
    ckpt = tmp_path / "ckpt"
    steps = [(1, 2, 1), (2, 4, 1), (1, 9, 2)]  # (data-parallel size, last iteration, workers per rank)
    for i, (dp, last, workers) in enumerate(steps):
        torchrun(dp, *shard_flags(dataset, tokenizer, num_workers=workers), *COMMON, "--train-iters", str(last),
                 "--save", str(ckpt), "--load", str(ckpt), "--keep-last", "0", "--run-dir", str(tmp_path / f"run{i}"))
    assert held_samples(ckpt, 2) and held_samples(ckpt, 4), "the packers' contents are resharded too"
    trained: dict[int, list[str]] = {}
    for i in range(len(steps)):
        trained.update(ledger(tmp_path / f"run{i}"))
    assert sorted(trained) == list(range(1, 10))
    order = [s for iteration in sorted(trained) for s in trained[iteration]]
    epoch = {f"s{i:03d}" for i in range(48)}
    assert set(order) == epoch, "none lost"
    first_repeat = next(i for i, s in enumerate(order) if s in order[:i])
    late = epoch - set(order[:first_repeat])  # first trained after another sample's second time
    assert len(late) <= 2 * PACKING_BUFFER, sorted(late)


@pytest.mark.slow
def test_mock_data_resumed_from_dp2_at_dp1_continues_the_uninterrupted_run(tmp_path):
    """The DP=2 run's checkpoint of iteration 2, resumed at DP=1, trains the micro-batches the DP=2
    run trained in iterations 3 and 4, to its losses (data parallelism moves the arithmetic only)."""
    ckpt, load = tmp_path / "ckpt", tmp_path / "at-2"
    torchrun(2, *MOCK, "--train-iters", "4", "--save", str(ckpt), "--save-interval", "2", "--keep-last", "0",
             "--run-dir", str(tmp_path / "dp2"))
    shutil.copytree(iteration_dir(ckpt, 2), iteration_dir(load, 2))
    write_tracker(load, 2)
    torchrun(1, *MOCK, "--train-iters", "4", "--load", str(load), "--run-dir", str(tmp_path / "dp1"))
    uninterrupted, resumed = ledger(tmp_path / "dp2"), ledger(tmp_path / "dp1")
    assert sorted(resumed) == [3, 4]
    assert all(resumed[i] == uninterrupted[i] for i in (3, 4)), "the same micro-batches, in the same iterations"
    losses = {r["iteration"]: r["loss"] for r in read_metrics(tmp_path / "dp2")}
    for record in read_metrics(tmp_path / "dp1"):
        assert record["loss"] == pytest.approx(losses[record["iteration"]], rel=1e-5)


@pytest.mark.parametrize("saved_dp, saved_micro, new_dp, new_micro", [(2, 1, 1, 2), (1, 4, 2, 2), (2, 2, 4, 1)])
def test_mock_data_continues_at_the_first_micro_batch_not_consumed(saved_dp, saved_micro, new_dp, new_micro):
    """Same global batch at both sizes: iteration 3 at the new size is iteration 3 of any layout."""
    config = get_preset("tiny")

    def iterators(dp, micro):
        return [MockDataIterator(config, 192, 1, 5, rank, dp, micro) for rank in range(dp)]

    saved = iterators(saved_dp, saved_micro)
    for it in saved:
        for _ in range(2 * saved_micro):  # two iterations
            next(it)
    resumed, reference = iterators(new_dp, new_micro), iterators(new_dp, new_micro)
    for rank, it in enumerate(resumed):
        it.load_state_dict(saved[rank % saved_dp].state_dict())
    for it in reference:
        for _ in range(2 * new_micro):
            next(it)
    for got, want in zip(resumed, reference):
        assert [next(got).sample_ids for _ in range(new_micro)] == [next(want).sample_ids for _ in range(new_micro)]


def test_mock_data_refuses_a_resume_that_splits_a_global_batch():
    config = get_preset("tiny")
    saved = MockDataIterator(config, 192, 1, 5, 0, 2, 1)
    next(saved)
    resumed = MockDataIterator(config, 192, 1, 5, 0, 1, 4)  # a global batch of 4 after one of 2
    with pytest.raises(ValueError, match=r"2 packs.*global batches of 4.*--reset-data-state"):
        resumed.load_state_dict(saved.state_dict())
