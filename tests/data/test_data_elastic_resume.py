"""Elastic resume: loader states saved at one data-parallel size (and worker count) are resharded
onto another, and the run still reads every sample of an epoch exactly once: what the saved ranks
had trained, held in their packers, and still owed their epoch, then the new layout's epochs."""

import io
from collections import Counter

import pytest
import torch
from shard_builder import make_sample, split_loader_options, write_dataset

from megatron_infimed.data.loader import build_train_loader
from megatron_infimed.data.reshard import reshard_loader_states

SEQ = 192
MED = [f"m{i:03d}" for i in range(60)]
GEN = [f"g{i:03d}" for i in range(25)]
EPOCH = Counter(MED + GEN)
# (saved dp size, workers) -> (new dp size, workers)
CHANGES = [((2, 2), (1, 2)), ((1, 2), (2, 2)), ((2, 2), (3, 1)), ((2, 1), (2, 3))]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    med = [make_sample(key, num_images=i % 3, answer_words=3 + (i * 7) % 40, seed=i) for i, key in enumerate(MED)]
    gen = [make_sample(key, num_images=0, answer_words=2 + i % 9, seed=100 + i) for i, key in enumerate(GEN)]
    return str(write_dataset(root / "med", med, [13, 20, 7, 20])), str(write_dataset(root / "gen", gen, [10, 15]))


@pytest.fixture
def loader_for(datasets, sp_tokenizer, tiny_config):
    def build(dp_rank, dp_size, workers, **overrides):
        options = {"paths": datasets, "weights": (2.0, 1.0), "seq_length": SEQ, "num_workers": workers,
                   "worker_processes": False, "shuffle_buffer": 8, "packing_buffer": 16, "seed": 7,
                   "micro_batch_size": 1, "num_epochs": 2, **overrides}
        data, batch, seed = split_loader_options(options)
        return build_train_loader(data, batch, tiny_config, sp_tokenizer, dp_rank, dp_size, seed)
    return build


def saved(states: list[dict]) -> list[dict]:
    """The states as a checkpoint gives them back: through torch.save and a weights-only load."""
    buffer = io.BytesIO()
    torch.save(states, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def run_until_checkpoint(loader_for, layout, packs_per_rank, **options):
    """Ranks of ``layout`` reading ``packs_per_rank`` micro-batches each: (sample ids, saved states)."""
    size, workers = layout
    loaders = [loader_for(rank, size, workers, **options) for rank in range(size)]
    trained = [s for loader in loaders for _ in range(packs_per_rank) for s in next(loader).sample_ids]
    return trained, saved([loader.state_dict() for loader in loaders])


def resume(loader_for, states, layout, **options):
    size, workers = layout
    loaders = []
    for rank in range(size):
        loader = loader_for(rank, size, workers, **options)
        loader.load_state_dict(reshard_loader_states(iter(states), rank, size, workers))
        loaders.append(loader)
    return loaders


def held(state: dict) -> int:
    packer = state["packer"]
    return len(packer["pending"]) + sum(len(items) for *_, items in packer["open"]) + sum(map(len, state["ready"]))


def epoch_slice(loader_for, rank, layout, epoch, **options) -> Counter:
    """The samples rank ``rank`` of a fresh ``layout`` reads in ``epoch``."""
    def read(num_epochs):
        return Counter(s for pack in loader_for(rank, *layout, num_epochs=num_epochs, **options)
                       for s in pack.sample_ids)
    return read(epoch + 1) - read(epoch)


@pytest.mark.parametrize("before, after", CHANGES)
def test_a_resharded_run_reads_the_rest_of_the_epoch_once_then_the_new_split(loader_for, before, after):
    trained, states = run_until_checkpoint(loader_for, before, packs_per_rank=3)
    assert len(trained) == len(set(trained)), "still inside epoch 0"
    assert all(held(state) for state in states), "the packers' buffers travel too"
    resumed = resume(loader_for, states, after)
    read = [Counter(s for pack in loader for s in pack.sample_ids) for loader in resumed]
    # Two epochs in all: none lost, none repeated, the held samples included.
    assert Counter(trained) + sum(read, Counter()) == EPOCH + EPOCH
    # Each new rank reads its share of the debt, then exactly its own slice of epoch 1.
    owed = EPOCH - Counter(trained)
    debts = []
    for rank, got in enumerate(read):
        own = epoch_slice(loader_for, rank, after, 1)
        assert not own - got, f"rank {rank} misses part of its epoch-1 slice"
        debts.append(got - own)
    assert sum(debts, Counter()) == owed
    # Split evenly: within one sample per dataset and worker, and one of the dealt held samples.
    sizes = [sum(debt.values()) for debt in debts]
    assert max(sizes) - min(sizes) <= 2 * after[1] + 1, sizes


def first_next_epoch_read(trained: set[str], steps: list[list[str]], dataset: str) -> tuple[list[str], int]:
    """``dataset``'s samples in reading order, and the index of the first that belongs to the next
    epoch (one trained before the checkpoint, or one read twice)."""
    order = [s for step in steps for s in step if s[0] == dataset]
    seen = set()
    for i, sample in enumerate(order):
        if sample in trained or sample in seen:
            return order, i
        seen.add(sample)
    return order, len(order)


@pytest.mark.parametrize("before, after", CHANGES)
def test_the_debt_is_read_before_the_next_epoch(loader_for, before, after):
    """Without packing, samples leave in reading order: per dataset, no new stream begins epoch 1
    while more than one sample of a debt is left (the debt is split like an epoch, within one)."""
    trained, states = run_until_checkpoint(loader_for, before, packs_per_rank=3, packing=False, micro_batch_size=2)
    trained = set(trained)
    resumed = resume(loader_for, states, after, packing=False, micro_batch_size=2)
    steps = [[s for pack in step for s in pack.sample_ids] for step in zip(*resumed)]  # ranks in lockstep
    new_streams = after[0] * after[1]
    for dataset, everything in (("m", MED), ("g", GEN)):
        owed = set(everything) - trained
        order, first_next = first_next_epoch_read(trained, steps, dataset)
        late = owed - set(order[:first_next])
        assert len(late) < new_streams, (dataset, sorted(late))
        assert owed <= set(order), "nothing owed is lost"


@pytest.mark.parametrize("middle_packs", [1, 20])
def test_a_resharded_run_reshards_again_mid_debt_or_past_the_next_epoch(loader_for, middle_packs):
    """DP=1 → DP=2 → DP=1 (2 workers) over three epochs: saved while the second layout still owed
    (1 pack each), or after its streams had begun the next epoch (20 packs: they owe its rest)."""
    trained, states = run_until_checkpoint(loader_for, (1, 1), packs_per_rank=3, num_epochs=3)
    middle = resume(loader_for, states, (2, 2), num_epochs=3)
    trained += [s for loader in middle for _ in range(middle_packs) for s in next(loader).sample_ids]
    states = saved([loader.state_dict() for loader in middle])
    owing = any(ranges for state in states for worker in state["worker_states"] for ranges in worker["owed"])
    began = {epoch for state in states for worker in state["worker_states"] for epoch, _ in worker["datasets"]}
    assert owing if middle_packs == 1 else began == {1, 2}
    rest = [s for loader in resume(loader_for, states, (1, 2), num_epochs=3) for pack in loader
            for s in pack.sample_ids]
    assert Counter(trained) + Counter(rest) == EPOCH + EPOCH + EPOCH


def test_a_rank_an_epoch_behind_owes_the_epochs_it_had_not_begun(loader_for):
    """Ranks drift (bad or overlong samples, uneven packs): rank 0 has begun epoch 1 while rank 1 is
    still in epoch 0. The new split starts at epoch 2, so rank 1's rest of epoch 0 and its whole
    slice of epoch 1 are owed; rank 0's rest of epoch 1 too."""
    loaders = [loader_for(rank, 2, 1, num_epochs=3) for rank in range(2)]
    trained = [s for rank, packs in enumerate((14, 2)) for _ in range(packs) for s in next(loaders[rank]).sample_ids]
    states = saved([loader.state_dict() for loader in loaders])
    epochs = [[epoch for epoch, _ in state["worker_states"][0]["datasets"]] for state in states]
    assert min(epochs[0]) >= 1 and epochs[1] == [0, 0]
    rest = [s for loader in resume(loader_for, states, (1, 2), num_epochs=3) for pack in loader
            for s in pack.sample_ids]
    assert Counter(trained) + Counter(rest) == EPOCH + EPOCH + EPOCH


def test_resharding_at_the_same_size_changes_nothing(loader_for):
    """Same layout through the reshard: the same set, though not the same packs (the packer restarts)."""
    trained, states = run_until_checkpoint(loader_for, (2, 2), packs_per_rank=2)
    rest = [s for loader in resume(loader_for, states, (2, 2)) for pack in loader for s in pack.sample_ids]
    assert Counter(trained) + Counter(rest) == EPOCH + EPOCH


def test_a_state_of_another_layout_is_refused_without_the_reshard(loader_for):
    _, states = run_until_checkpoint(loader_for, (2, 2), packs_per_rank=1)
    with pytest.raises(ValueError, match=r"dp_size.*\(2, 1\).*reshard_loader_states"):
        loader_for(0, 1, 2).load_state_dict(states[0])


def test_a_reshard_that_cannot_be_exact_is_refused_naming_what_differs(loader_for):
    _, states = run_until_checkpoint(loader_for, (2, 2), packs_per_rank=1)
    with pytest.raises(ValueError, match=r"seed.*\(7, 8\).*--reset-data-state"):
        loader_for(0, 1, 2, seed=8).load_state_dict(reshard_loader_states(states, 0, 1, 2))
    with pytest.raises(ValueError, match="every saved rank's state is needed"):
        reshard_loader_states(states[:1], 0, 1, 2)
    with pytest.raises(ValueError, match="rank 1.*in rank order"):
        reshard_loader_states(states[::-1], 0, 1, 2)
    old = {**states[0], "version": 1}
    del old["shuffle_buffer"]
    with pytest.raises(ValueError, match=r"version 1.*data-parallel size \(2\).*--reset-data-state"):
        reshard_loader_states([old, states[1]], 0, 1, 2)


def test_a_version_1_state_still_resumes_at_its_own_layout(loader_for):
    reference = loader_for(1, 2, 2, num_epochs=None)
    expected = [next(reference).sample_ids for _ in range(5)]
    first = loader_for(1, 2, 2, num_epochs=None)
    head = [next(first).sample_ids for _ in range(2)]
    state = first.state_dict()
    state["version"] = 1  # as saved before elastic resume: no owed ranges, no carry, no shuffle window
    for key in ("shuffle_buffer", "carry"):
        del state[key]
    for worker in state["worker_states"]:
        del worker["owed"]
    resumed = loader_for(1, 2, 2, num_epochs=None)
    resumed.load_state_dict(state)
    assert head + [next(resumed).sample_ids for _ in range(3)] == expected
