"""The training loader end to end: packs, exactly-once over ranks, resume, bad input, no-packing."""

import io
from collections import Counter

import pytest
import torch
from shard_builder import make_sample, split_loader_options, write_dataset

from megatron_infimed.config.run import DataConfig
from megatron_infimed.data.loader import build_train_loader
from megatron_infimed.data.pack import IGNORE_INDEX

SEQ = 192


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    med = [make_sample(f"m{i:03d}", num_images=i % 3, answer_words=3 + (i * 7) % 40, seed=i) for i in range(60)]
    gen = [make_sample(f"g{i:03d}", num_images=0, answer_words=2 + i % 9, seed=100 + i) for i in range(25)]
    return str(write_dataset(root / "med", med, [13, 20, 7, 20])), str(write_dataset(root / "gen", gen, [10, 15]))


def loader_for(datasets, tokenizer, model_config, dp_rank=0, dp_size=1, mbs=1, **overrides):
    options = {"paths": tuple(datasets), "seq_length": SEQ, "num_workers": 2, "worker_processes": False,
               "shuffle_buffer": 8, "packing_buffer": 16, "seed": 7, "micro_batch_size": mbs, **overrides}
    data, batch, seed = split_loader_options(options)
    return build_train_loader(data, batch, model_config, tokenizer, dp_rank, dp_size, seed)


def same_pack(a, b) -> bool:
    return (a.sample_ids == b.sample_ids and a.images_per_sample == b.images_per_sample and
            all(torch.equal(getattr(a, f), getattr(b, f)) for f in
                ("tokens", "labels", "loss_weights", "cu_seqlens", "position_ids", "images")))


def test_packs_are_valid_and_fit_the_sequence_length(datasets, sp_tokenizer, tiny_config):
    loader = loader_for(datasets, sp_tokenizer, tiny_config, num_epochs=1)
    packs = list(loader)
    for pack in packs:
        pack.validate()
        assert pack.num_tokens <= SEQ
        assert int((pack.tokens == sp_tokenizer.image_token_id).sum()) == 16 * pack.images.shape[0]
        assert pack.images.shape[1:] == (3, 64, 64) and pack.images.dtype == torch.uint8
    stats = loader.stats()
    assert stats["data/packs"] == len(packs) and stats["data/samples"] == 85
    assert 0.8 < stats["data/fill_ratio"] <= 1.0 and stats["data/samples_per_pack"] > 2


@pytest.mark.parametrize("dp_size", [1, 2, 3])
def test_one_epoch_trains_every_sample_exactly_once_across_ranks(datasets, sp_tokenizer, tiny_config, dp_size):
    seen = Counter()
    for rank in range(dp_size):
        for pack in loader_for(datasets, sp_tokenizer, tiny_config, rank, dp_size, num_epochs=1):
            seen.update(pack.sample_ids)
    assert seen == Counter([f"m{i:03d}" for i in range(60)] + [f"g{i:03d}" for i in range(25)])


@pytest.mark.parametrize("stop", [1, 4, 9])
def test_resume_yields_exactly_the_following_packs(datasets, sp_tokenizer, tiny_config, stop):
    reference = loader_for(datasets, sp_tokenizer, tiny_config, 1, 2, mbs=2, weights=(2.0, 1.0))
    expected = [next(reference) for _ in range(stop + 6)]
    first = loader_for(datasets, sp_tokenizer, tiny_config, 1, 2, mbs=2, weights=(2.0, 1.0))
    for _ in range(stop):
        next(first)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # the trainer saves it with the checkpoint
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # plain containers and bytes only
    assert state["packer"]["open"] or state["packer"]["pending"]  # the packer buffer travels too
    resumed = loader_for(datasets, sp_tokenizer, tiny_config, 1, 2, mbs=2, weights=(2.0, 1.0))
    resumed.load_state_dict(state)
    following = [next(resumed) for _ in range(6)]
    assert all(same_pack(a, b) for a, b in zip(following, expected[stop:]))
    assert resumed.stats()["data/packs"] == stop * 2 + 12  # counters travel with the state


@pytest.mark.slow  # DataLoader worker processes
def test_worker_processes_produce_the_same_packs_and_resume_the_same(datasets, sp_tokenizer, tiny_config):
    in_process = loader_for(datasets, sp_tokenizer, tiny_config, num_epochs=2)
    expected = list(in_process)
    loader = loader_for(datasets, sp_tokenizer, tiny_config, num_epochs=2, worker_processes=True)
    head = [next(loader) for _ in range(5)]
    state = loader.state_dict()
    loader.close()
    resumed = loader_for(datasets, sp_tokenizer, tiny_config, num_epochs=2, worker_processes=True)
    resumed.load_state_dict(state)
    got = head + list(resumed)
    assert len(got) == len(expected) and all(same_pack(a, b) for a, b in zip(got, expected))


def test_one_ranks_state_at_another_dp_size_is_refused_unless_reset(datasets, sp_tokenizer, tiny_config):
    """Resuming at another size reshards every rank's state (test_data_elastic_resume.py); one
    rank's state alone cannot say what the others owed."""
    loader = loader_for(datasets, sp_tokenizer, tiny_config, 0, 2)
    next(loader)
    state = loader.state_dict()
    other = loader_for(datasets, sp_tokenizer, tiny_config, 0, 4)
    with pytest.raises(ValueError, match=r"dp_size.*\(2, 4\).*reshard_loader_states.*reset=True"):
        other.load_state_dict(state)
    other.load_state_dict(state, reset=True)
    assert next(other).num_tokens > 0 and other.stats()["data/packs"] == 2


def test_corrupt_members_mid_shard_are_skipped_counted_and_the_rest_trained(tmp_path, sp_tokenizer, tiny_config):
    samples = [make_sample(f"c{i:02d}", num_images=1, seed=i) for i in range(12)]
    samples[3]["raw_json"] = b"{broken"
    samples[7]["images"]["png"] = b"not an image"
    path = str(write_dataset(tmp_path, samples, [6, 6]))
    loader = loader_for([path], sp_tokenizer, tiny_config, num_epochs=1, num_workers=1)
    trained = sorted(s for pack in loader for s in pack.sample_ids)
    assert trained == [f"c{i:02d}" for i in range(12) if i not in (3, 7)]
    stats = loader.stats()
    assert stats["data/bad/bad_json"] == 1 and stats["data/bad/bad_image"] == 1 and stats["data/bad_inputs"] == 2
    records = {r["key"]: r for r in loader.recent_errors()}
    assert records["c03"]["reason"] == "bad_json" and records["c03"]["shard"].endswith("shard-000000.tar")
    assert records["c07"]["reason"] == "bad_image" and records["c07"]["shard"].endswith("shard-000001.tar")


def test_overlong_samples_are_truncated_or_dropped_and_counted(tmp_path, sp_tokenizer, tiny_config):
    samples = [make_sample("long", num_images=1, answer_words=400), make_sample("short", num_images=1)]
    path = str(write_dataset(tmp_path, samples, [2]))
    truncating = loader_for([path], sp_tokenizer, tiny_config, num_epochs=1, num_workers=1)
    assert sorted(s for p in truncating for s in p.sample_ids) == ["long", "short"]
    assert truncating.stats()["data/truncated"] == 1
    dropping = loader_for([path], sp_tokenizer, tiny_config, num_epochs=1, num_workers=1, overlong="drop")
    assert [s for p in dropping for s in p.sample_ids] == ["short"]
    assert dropping.stats()["data/dropped/overlong_dropped"] == 1


def test_no_packing_pads_each_micro_batch_to_its_longest_sample(datasets, sp_tokenizer, tiny_config):
    loader = loader_for(datasets, sp_tokenizer, tiny_config, mbs=4, packing=False, num_epochs=1)
    batches = list(loader)
    assert sum(len(b.sample_ids) for b in batches) == 85
    for batch in batches:
        batch.validate()
        lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
        assert len(set(lengths)) == 1 and len(lengths) == len(batch.sample_ids)
        assert float(batch.loss_weights[batch.labels == IGNORE_INDEX].abs().sum()) == 0
    assert loader.stats()["data/fill_ratio"] < 1.0


def test_paths_given_as_one_string_are_refused():
    with pytest.raises(ValueError, match=r"data.paths must be a list of prepared dataset folders.*got '/data/med'"):
        DataConfig(paths="/data/med")


def test_model_config_must_share_the_tokenizer_image_token(datasets, sp_tokenizer):
    from megatron_infimed.config.presets import get_preset
    with pytest.raises(ValueError, match="align_model_config"):
        loader_for(datasets, sp_tokenizer, get_preset("tiny"))


def test_a_worker_group_shares_two_storages_and_keeps_every_value():
    """Worker processes send items in groups whose tensors live in two shared storages (one
    shared-memory segment each); the samples read exactly as before."""
    from megatron_infimed.data.blending import StreamItem, share_storage
    from megatron_infimed.data.preprocess import Sample

    g = torch.Generator().manual_seed(0)

    def sample(n, images):
        return Sample(f"s{n}", "d", torch.randint(0, 99, (n,), generator=g), torch.randint(-100, 99, (n,), generator=g),
                      torch.randint(0, 255, (images, 3, 4, 4), generator=g, dtype=torch.uint8))

    samples = [sample(5, 1), sample(3, 0), sample(7, 2)]
    before = [(s.input_ids.clone(), s.labels.clone(), s.pixels.clone()) for s in samples]
    items = share_storage([StreamItem(0, s, {}) for s in samples] + [StreamItem(0, None, {})])
    after = [item.sample for item in items[:3]]
    assert items[3].sample is None
    for s, (ids, labels, pixels) in zip(after, before):
        assert torch.equal(s.input_ids, ids) and torch.equal(s.labels, labels) and torch.equal(s.pixels, pixels)
        assert s.pixels.shape == pixels.shape and s.pixels.dtype == torch.uint8
    storages = {t.untyped_storage().data_ptr() for s in after for t in (s.input_ids, s.labels)}
    assert len(storages) == 1
    assert len({s.pixels.untyped_storage().data_ptr() for s in after}) == 1
