"""``--use-distributed-optimizer`` (megatron-core's DistributedOptimizer, on the CPU backend) moves
the optimizer state, not the training: in bf16 at DP=2 it gives the plain optimizer's losses, and its
checkpoint, saved at DP=2, resumes at TP=2 (hence DP=1) where the plain optimizer's does.

The resumed runs pass ``--reset-data-state``, which restarts ``--mock-data`` at the first global
batch (without it the stream would reshard to the new data-parallel size and go on): they are
compared with the plain optimizer's checkpoint resumed the same way, not with the uninterrupted run.
Two iterations after the resume: the first loss depends on the weights only, the second on the
restored Adam moments and step as well."""

import shutil

import pytest
from trainrun import read_metrics, torchrun

from megatron_infimed.checkpoint.layout import iteration_dir, write_tracker
from megatron_infimed.checkpoint.metadata import read_metadata

MOCK = ["--preset", "tiny", "--mock-data", "--bf16", "--train-iters", "3", "--seed", "11", "--log-interval", "1",
        "--seq-length", "192", "--global-batch-size", "4", "--lr", "2e-3"]
DISTRIBUTED = ["--use-distributed-optimizer"]
SAVED_AT = 1

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed-optimizer")


@pytest.fixture(scope="module")
def dp2(root) -> dict[str, list[dict]]:
    """Three iterations at DP=2 with each optimizer, saving every iteration."""
    runs = {}
    for name, flags in (("plain", []), ("distributed", DISTRIBUTED)):
        torchrun(2, *MOCK, *flags, "--run-dir", str(root / name), "--save", str(root / name / "ckpt"),
                 "--save-interval", "1", "--keep-last", "0")
        runs[name] = read_metrics(root / name)
    return runs


def resume_at_tp2(root, name: str, flags: list[str]) -> list[dict]:
    """``name``'s checkpoint of iteration ``SAVED_AT``, resumed at TP=2 to the end."""
    load = root / f"{name}-at-{SAVED_AT}"
    shutil.copytree(iteration_dir(root / name / "ckpt", SAVED_AT), iteration_dir(load, SAVED_AT))
    write_tracker(load, SAVED_AT)
    run_dir = root / f"{name}-tp2"
    torchrun(2, *MOCK, *flags, "--load", str(load), "--reset-data-state", "--tensor-model-parallel-size", "2",
             "--run-dir", str(run_dir))
    return read_metrics(run_dir)


def test_dp2_with_the_distributed_optimizer_gives_the_plain_optimizers_losses(dp2):
    plain, distributed = dp2["plain"], dp2["distributed"]
    assert [r["iteration"] for r in distributed] == [1, 2, 3]
    for ref, got in zip(plain, distributed):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
        # The norm is summed shard by shard, in another order: its last bit moves the clipping factor,
        # hence a few bf16 weights by one rounding step, and the next bf16 backward makes that ~4e-4.
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-3)
        assert got["tokens"] == ref["tokens"]
    # Three steps at lr 2e-3 are noisy (iteration 3's packs are harder than iteration 2's).
    assert min(r["loss"] for r in distributed[1:]) < distributed[0]["loss"], "mock training should learn"


def test_its_checkpoint_holds_each_parameters_state_at_the_parameters_shape(root, dp2):
    """megatron's "fully_reshardable" layout: per parameter, under its sharded key, whatever the
    buckets and data-parallel shards were, so any TP/PP/DP layout can load it."""
    stored = read_metadata(iteration_dir(root / "distributed" / "ckpt", SAVED_AT)).state_dict_metadata
    weights = [k for k in stored if k.endswith(".weight") and not k.startswith("optimizer.")]
    assert weights
    for key in weights:
        for state in ("param", "exp_avg", "exp_avg_sq"):
            assert stored[f"optimizer.state.{state}.{key}"].size == stored[key].size, (state, key)


def test_its_checkpoint_resumes_at_tp2_as_the_plain_optimizers_does(root, dp2):
    reference = resume_at_tp2(root, "plain", [])
    resumed = resume_at_tp2(root, "distributed", DISTRIBUTED)
    assert [r["iteration"] for r in resumed] == [SAVED_AT + 1, SAVED_AT + 2]
    for ref, got in zip(reference, resumed):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
