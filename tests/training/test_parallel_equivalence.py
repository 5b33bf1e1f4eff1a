"""Tensor, sequence, context, pipeline and data parallelism change where the arithmetic happens,
not its result: the per-iteration loss and gradient norm match one rank (fp32, 1e-5 relative) on
--mock-data, whose packs hold several samples of odd lengths, most with an image."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from trainrun import free_port, read_metrics, shard_flags, torchrun

MOCK = ["--preset", "tiny", "--mock-data", "--train-iters", "4", "--seed", "11", "--log-interval", "1",
        "--seq-length", "192", "--global-batch-size", "4", "--lr", "2e-3"]
# Interleaving needs layers for 2 stages × 2 virtual chunks, and micro-batches per stage.
DEEPER = ["--model-overrides", '{"language.num_layers": 4}']
# Layouts of 4 ranks run in one launch (tests/training/layouts_worker.py); data parallelism
# fills the ranks a layout leaves.
FOUR_RANK_LAYOUTS = {
    "tp2-sp-dp2": "--tensor-model-parallel-size 2 --sequence-parallel",
    "tp2-cp2": "--tensor-model-parallel-size 2 --context-parallel-size 2",
    "tp2-sp-cp2": "--tensor-model-parallel-size 2 --sequence-parallel --context-parallel-size 2",
    "tp2-sp-pp2": "--tensor-model-parallel-size 2 --sequence-parallel --pipeline-model-parallel-size 2",
    "cp2-dp2-distopt": "--context-parallel-size 2 --use-distributed-optimizer",
    "cp2-pp2": "--context-parallel-size 2 --pipeline-model-parallel-size 2",
}
DEEP_FOUR_RANK_LAYOUTS = {"cp2-pp2-vp2": "--context-parallel-size 2 --pipeline-model-parallel-size 2 "
                                         "--virtual-pipeline-model-parallel-size 2"}
# The rows of the 192-slot sequence each decoder block receives: 1/CP under context parallelism,
# and 1/TP of that under sequence parallelism; and the data-parallel ranks left (one ledger each).
SPLIT = {"tp2-sp-dp2": (96, 2), "tp2-cp2": (96, 1), "tp2-sp-cp2": (48, 1), "tp2-sp-pp2": (96, 1),
         "cp2-dp2-distopt": (96, 2), "cp2-pp2": (96, 1), "cp2-pp2-vp2": (96, 1)}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")

    def run(name: str, nproc: int, *flags: str) -> list[dict]:
        torchrun(nproc, *MOCK, *flags, "--run-dir", str(root / name))
        return read_metrics(root / name)

    return run


@pytest.fixture(scope="module")
def reference(runs):
    return runs("tp1", 1)


SHARD_RUN = ["--train-iters", "3", "--seed", "11", "--log-interval", "1", "--seq-length", "192",
             "--global-batch-size", "4"]


@pytest.fixture(scope="module")
def four_rank_layouts(tmp_path_factory, shard_dataset) -> Path:
    root = tmp_path_factory.mktemp("four-rank-layouts")
    mock = shlex.join(MOCK)
    shards = shlex.join([*shard_flags(*shard_dataset), *SHARD_RUN, "--context-parallel-size", "2"])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=4", f"--master-port={free_port()}",
               str(Path(__file__).with_name("layouts_worker.py")), str(root),
               *(f"{name}={mock} {flags}" for name, flags in FOUR_RANK_LAYOUTS.items()),
               *(f"{name}={mock} {shlex.join(DEEPER)} {flags}" for name, flags in DEEP_FOUR_RANK_LAYOUTS.items()),
               f"cp2-dp2-shards={shards}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return root


def assert_same_curve(reference, other):
    assert [r["iteration"] for r in other] == [1, 2, 3, 4]
    for ref, got in zip(reference, other):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
        assert got["tokens"] == ref["tokens"]


def test_metrics_have_one_record_per_iteration_with_the_required_fields(reference):
    assert [r["iteration"] for r in reference] == [1, 2, 3, 4]
    for record in reference:
        assert {"iteration", "loss", "grad_norm", "lr", "tokens", "tokens_per_s", "fill_ratio"} <= set(record)
    assert reference[-1]["loss"] < reference[0]["loss"], "mock training should learn"


def test_tensor_parallel_2_matches_one_rank(runs, reference):
    assert_same_curve(reference, runs("tp2", 2, "--tensor-model-parallel-size", "2"))


def test_sequence_parallel_with_tensor_parallel_2_matches_one_rank(runs, reference):
    assert_same_curve(reference, runs("tp2-sp", 2, "--tensor-model-parallel-size", "2", "--sequence-parallel"))


def test_context_parallel_2_matches_one_rank(runs, reference):
    assert_same_curve(reference, runs("cp2", 2, "--context-parallel-size", "2"))


@pytest.mark.parametrize("layout", sorted(FOUR_RANK_LAYOUTS))
def test_four_rank_layouts_with_sequence_or_context_parallelism_match_one_rank(four_rank_layouts, reference,
                                                                              layout):
    assert_same_curve(reference, read_metrics(four_rank_layouts / layout))


@pytest.mark.parametrize("layout", sorted(SPLIT))
def test_sequence_and_context_parallelism_really_split_the_decoders_sequence(four_rank_layouts, layout):
    rows, data_parallel = SPLIT[layout]
    for rank in range(4):
        assert json.loads((four_rank_layouts / layout / f"decoder-rows-rank{rank}.json").read_text()) == [rows]
    assert sorted(p.name for p in (four_rank_layouts / layout).glob("samples-dp*.jsonl")) == [
        f"samples-dp{r}.jsonl" for r in range(data_parallel)]


def test_context_parallel_trains_on_real_shards_with_the_data_split_over_data_parallel_ranks_only(
        four_rank_layouts):
    records = read_metrics(four_rank_layouts / "cp2-dp2-shards")
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert all(0 < r["loss"] < 20 and r["tokens"] > 0 for r in records)
    # One ledger per data-parallel rank (written by its CP rank 0 alone); the two CP ranks of a
    # data-parallel rank share its packs, and the data-parallel ranks read disjoint samples (an
    # epoch of this dataset ends within two iterations, and the next one splits it anew).
    ledgers = [[json.loads(line) for line in (four_rank_layouts / "cp2-dp2-shards" / f"samples-dp{r}.jsonl").open()]
               for r in (0, 1)]
    assert [[e["iteration"] for e in ledger] for ledger in ledgers] == [[1, 2, 3]] * 2
    assert not (four_rank_layouts / "cp2-dp2-shards" / "samples-dp2.jsonl").exists()
    first = [set(ledger[0]["sample_ids"]) for ledger in ledgers]
    assert all(first) and not first[0] & first[1]


def test_pipeline_parallel_2_matches_one_rank(runs, reference):
    assert_same_curve(reference, runs("pp2", 2, "--pipeline-model-parallel-size", "2"))


def test_tensor_2_by_pipeline_2_matches_one_rank(runs, reference):
    assert_same_curve(reference, runs("tp2pp2", 4, "--tensor-model-parallel-size", "2",
                                      "--pipeline-model-parallel-size", "2"))


def test_data_parallel_2_matches_one_rank(runs, reference):
    assert_same_curve(reference, runs("dp2", 2))


@pytest.fixture(scope="module")
def deep_reference(runs):
    return runs("deep-tp1", 1, *DEEPER)


def test_virtual_pipeline_matches_one_rank(runs, deep_reference):
    assert_same_curve(deep_reference, runs("deep-vpp", 2, *DEEPER, "--pipeline-model-parallel-size", "2",
                                           "--virtual-pipeline-model-parallel-size", "2"))


def test_context_parallel_with_interleaved_pipeline_matches_one_rank(four_rank_layouts, deep_reference):
    assert_same_curve(deep_reference, read_metrics(four_rank_layouts / "cp2-pp2-vp2"))


def test_activation_recomputation_changes_memory_not_results(runs, reference):
    assert_same_curve(reference, runs("recompute", 1, "--recompute-granularity", "full",
                                      "--recompute-method", "uniform", "--recompute-num-layers", "1"))
