"""Elastic resume: loader states saved at one data-parallel size (and worker count) are resharded
onto another, and the run still reads every sample of an epoch exactly once: what the saved ranks
had trained, held in their packers, and still owed their epoch, then the new layout's epochs."""

import io
import shutil
from collections import Counter

import pytest
import torch
from shard_builder import make_sample, split_loader_options, write_dataset

from megatron_infimed.checkpoint.dist import read_loader_state, save_loader_state
from megatron_infimed.data.loader import build_train_loader
from megatron_infimed.data.reshard import held_slice, join_held, reshard_loader_states, split_held

SEQ = 192
MED = [f"m{i:03d}" for i in range(60)]
GEN = [f"g{i:03d}" for i in range(25)]
EPOCH = Counter(MED + GEN)
# (saved dp size, workers) -> (new dp size, workers)
CHANGES = [((2, 2), (1, 2)), ((1, 2), (2, 2)), ((2, 2), (3, 1)), ((2, 1), (2, 3))]
# (saved dp size, new dp size) -> the saved ranks whose held samples each new rank is dealt (and reads)
DEALT = {(2, 1): [{0, 1}], (1, 2): [{0}, {0}], (2, 3): [{0}, {0, 1}, {1}], (2, 2): [{0}, {1}],
         (4, 2): [{0, 1}, {2, 3}], (1, 3): [{0}, {0}, {0}]}


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


def held_ids(state: dict) -> Counter:
    packer = state["packer"]
    return Counter([s["id"] for s in state["carry"]] + [s["id"] for pack in state["ready"] for s in pack]
                   + [s["id"] for *_, items in packer["open"] for s in items]
                   + [s["id"] for *_, s in packer["pending"]])


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
    carried = [Counter(s["id"] for s in reshard_loader_states(states, rank, *after)["carry"])
               for rank in range(after[0])]
    # The held samples are dealt by saved rank: each new rank gets only those of the saved ranks
    # dealt to it, all of them in all, as evenly as the saved ranks' counts allow.
    dealt = DEALT[before[0], after[0]]
    for got, ranks in zip(carried, dealt):
        assert not got - sum((held_ids(states[r]) for r in ranks), Counter())
    assert sum(carried, Counter()) == sum(map(held_ids, states), Counter())
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
    # The stream debt split evenly: within one sample per dataset and worker.
    sizes = [sum((debt - carry).values()) for debt, carry in zip(debts, carried)]
    assert max(sizes) - min(sizes) <= 2 * after[1], sizes


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


@pytest.mark.parametrize("saved, count, new", [(2, 10, 1), (1, 7, 3), (2, 9, 3), (4, 5, 2), (3, 4, 3), (2, 0, 5)])
def test_held_samples_are_dealt_in_contiguous_blocks_of_the_saved_ranks(saved, count, new):
    """Each saved rank's samples are partitioned over the new ranks, in order, and the new ranks take
    equal shares (within one sample) when the saved ranks hold as many."""
    slices = [[held_slice(rank, count, saved, j, new) for rank in range(saved)] for j in range(new)]
    for rank in range(saved):
        taken = [i for j in range(new) for i in range(*slices[j][rank])]
        assert taken == list(range(count))  # in order: rank j's slice is before rank j+1's
    shares = [sum(hi - lo for lo, hi in row) for row in slices]
    assert max(shares) - min(shares) <= 1, shares
    if saved == new:
        assert all(slices[j][r] == ((0, count) if r == j else (0, 0)) for j in range(new) for r in range(saved))


def test_split_states_reshard_as_whole_ones_reading_only_the_held_samples_dealt(loader_for):
    _, states = run_until_checkpoint(loader_for, (4, 1), packs_per_rank=2)
    parts = [split_held(state) for state in states]
    assert all("packer" not in small and small["held_samples"] == held(state) for (small, _), state
               in zip(parts, states))
    def read(r):
        opened.append(r)
        return parts[r][1]

    for rank, ranks in enumerate(DEALT[4, 2]):
        opened: list[int] = []
        got = reshard_loader_states((small for small, _ in parts), rank, 2, 2, held=read)
        assert got == reshard_loader_states(states, rank, 2, 2)
        assert sorted(opened) == sorted(ranks)
    with pytest.raises(ValueError, match="saved apart"):
        reshard_loader_states((small for small, _ in parts), 0, 2, 2)
    with pytest.raises(ValueError, match="not those the stream state of rank 1 counts"):
        join_held(parts[1][0], parts[0][1])
    with pytest.raises(ValueError, match="saved apart.*join_held"):
        loader_for(1, 4, 1).load_state_dict(parts[1][0])
    assert join_held(*parts[1]) == states[1]


def write_checkpoint(folder, states, whole=False):
    folder.mkdir(parents=True)
    for rank, state in enumerate(states):
        if whole:  # as saved before the held samples went to a file of their own
            torch.save(state, folder / f"dp{rank}.pt")
        else:
            save_loader_state(folder, rank, state)
    return folder


def rank_files(tmp_path, folder, name, keep_held):
    """A copy of ``folder`` with every stream state but only the held files of ``keep_held``."""
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    for path in copy.glob("dp*-held.pt"):
        if int(path.name[2:-len("-held.pt")]) not in keep_held:
            path.unlink()
    return copy


@pytest.mark.parametrize("before, after", [((4, 1), (2, 1)), ((2, 2), (3, 1)), ((1, 2), (2, 2))])
def test_a_resharding_rank_reads_only_the_held_files_dealt_to_it(loader_for, tmp_path, before, after):
    """Each new rank resumes from a checkpoint folder that lacks every held file but those of the
    saved ranks dealt to it, and together they still read the two epochs exactly."""
    trained, states = run_until_checkpoint(loader_for, before, packs_per_rank=2)
    folder = write_checkpoint(tmp_path / "loader", states)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"dp{r}{suffix}.pt" for r in range(before[0]) for suffix in ("", "-held"))
    size, workers = after
    rest = Counter()
    for rank, ranks in enumerate(DEALT[before[0], size]):
        only = rank_files(tmp_path, folder, f"rank{rank}", ranks)
        loader = loader_for(rank, size, workers)
        loader.load_state_dict(read_loader_state(only, before[0], rank, size, workers, reset=False))
        rest.update(s for pack in loader for s in pack.sample_ids)
    assert Counter(trained) + rest == EPOCH + EPOCH


@pytest.mark.parametrize("whole", [False, True], ids=["split", "one-file"])
def test_at_the_same_layout_a_rank_reads_its_own_files_and_continues_its_packs(loader_for, tmp_path, whole):
    """Split or as saved before the split (one file with everything), a rank at the saved layout
    needs only its own file(s) and makes exactly the packs it would have made."""
    loaders = [loader_for(rank, 2, 2, num_epochs=None) for rank in range(2)]
    for loader in loaders:
        for _ in range(3):
            next(loader)
    folder = write_checkpoint(tmp_path / "loader", saved([loader.state_dict() for loader in loaders]), whole)
    for rank, loader in enumerate(loaders):
        own = tmp_path / f"own{rank}"
        own.mkdir()
        for path in folder.glob(f"dp{rank}[.-]*"):
            shutil.copy(path, own / path.name)
        resumed = loader_for(rank, 2, 2, num_epochs=None)
        resumed.load_state_dict(read_loader_state(own, 2, rank, 2, 2, reset=False))
        assert [next(resumed).sample_ids for _ in range(4)] == [next(loader).sample_ids for _ in range(4)]


@pytest.mark.parametrize("before, after", [((2, 2), (1, 2)), ((2, 1), (2, 3))])
def test_a_checkpoint_of_one_file_per_rank_still_reshards(loader_for, tmp_path, before, after):
    trained, states = run_until_checkpoint(loader_for, before, packs_per_rank=3)
    folder = write_checkpoint(tmp_path / "loader", states, whole=True)
    size, workers = after
    rest = Counter()
    for rank in range(size):
        loader = loader_for(rank, size, workers)
        loader.load_state_dict(read_loader_state(folder, before[0], rank, size, workers, reset=False))
        rest.update(s for pack in loader for s in pack.sample_ids)
    assert Counter(trained) + rest == EPOCH + EPOCH
