"""Shard streaming: exactly-once splits over ranks × workers, window shuffle, resume, bad shards, blending."""

import re
from collections import Counter

import pytest
from shard_builder import make_sample, write_dataset

from megatron_infimed.data.blending import StreamSpec, pick_dataset
from megatron_infimed.data.images import ImagePreprocessor
from megatron_infimed.data.preprocess import SamplePreprocessor
from megatron_infimed.data.streaming import DatasetIndex, DatasetStream, stream_range

UNEVEN = [7, 3, 11, 1, 5, 2, 9]  # 38 samples in 7 shards of uneven sizes


def text_dataset(root, shard_sizes, prefix="s"):
    samples = [make_sample(f"{prefix}{i:04d}", num_images=0, seed=i) for i in range(sum(shard_sizes))]
    return DatasetIndex.from_dir(write_dataset(root, samples, shard_sizes))


def keys_of(stream):
    return [entry.key for entry in stream]


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    return text_dataset(tmp_path_factory.mktemp("uneven"), UNEVEN)


@pytest.mark.parametrize("dp_size, workers", [(1, 1), (2, 1), (2, 3), (3, 2), (4, 4), (5, 3)])
@pytest.mark.parametrize("shuffle_buffer", [0, 4])
def test_every_sample_is_read_exactly_once_per_epoch_across_ranks_and_workers(uneven, dp_size, workers,
                                                                              shuffle_buffer):
    n = dp_size * workers
    seen = Counter()
    for stream in range(n):
        seen.update(keys_of(DatasetStream(uneven, 0, stream, n, seed=3, shuffle_buffer=shuffle_buffer, num_epochs=1)))
    assert seen == Counter(f"s{i:04d}" for i in range(38))


def test_streams_are_balanced_to_one_sample():
    sizes = [stream_range(38, s, 16)[1] - stream_range(38, s, 16)[0] for s in range(16)]
    assert sum(sizes) == 38 and max(sizes) - min(sizes) <= 1


def test_each_epoch_is_complete_and_shuffled_differently(uneven):
    keys = keys_of(DatasetStream(uneven, 0, 0, 1, seed=3, shuffle_buffer=8, num_epochs=2))
    first, second = keys[:38], keys[38:]
    assert sorted(first) == sorted(second) == sorted(set(keys)) and first != second


def test_shuffle_is_seeded(uneven):
    a = keys_of(DatasetStream(uneven, 0, 0, 1, seed=3, shuffle_buffer=8, num_epochs=1))
    b = keys_of(DatasetStream(uneven, 0, 0, 1, seed=3, shuffle_buffer=8, num_epochs=1))
    c = keys_of(DatasetStream(uneven, 0, 0, 1, seed=4, shuffle_buffer=8, num_epochs=1))
    assert a == b and a != c and a != sorted(a)


@pytest.mark.parametrize("stop", [1, 7, 8, 20, 38, 45])
def test_restoring_epoch_and_position_continues_the_exact_sequence(uneven, stop):
    reference = keys_of(DatasetStream(uneven, 0, 1, 2, seed=5, shuffle_buffer=8, num_epochs=3))
    stream = DatasetStream(uneven, 0, 1, 2, seed=5, shuffle_buffer=8, num_epochs=3)
    it = iter(stream)
    head = [next(it).key for _ in range(stop)]
    resumed = DatasetStream(uneven, 0, 1, 2, seed=5, shuffle_buffer=8, num_epochs=3)
    resumed.restore(stream.state())
    assert head + keys_of(resumed) == reference


def test_unopenable_shard_is_retried_then_each_position_recorded(tmp_path):
    index = text_dataset(tmp_path, [4, 3, 5])
    (tmp_path / "shards" / "shard-000001.tar").unlink()
    entries = list(DatasetStream(index, 0, 0, 1, seed=0, shuffle_buffer=0, num_epochs=1, retries=2, retry_delay=0))
    errors = [e.error for e in entries if e.error]
    assert len(entries) == 12 and len(errors) == 3
    assert {e.reason for e in errors} == {"shard_unopenable"} and "shard-000001.tar" in errors[0].shard
    assert "after 3 tries" in errors[0].message
    assert sorted(e.key for e in entries if not e.error) == [f"s{i:04d}" for i in [0, 1, 2, 3, 7, 8, 9, 10, 11]]


def test_truncated_tar_keeps_positions_and_records_the_lost_samples(tmp_path):
    index = text_dataset(tmp_path, [10, 4])
    shard = tmp_path / "shards" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2 + 100])
    entries = list(DatasetStream(index, 0, 0, 1, seed=0, shuffle_buffer=0, num_epochs=1))
    good = [e.key for e in entries if not e.error]
    lost = [e.error for e in entries if e.error]
    assert len(entries) == 14 and len(lost) >= 4
    assert {e.reason for e in lost} <= {"shard_read_error", "shard_shorter_than_manifest"}
    assert good[-4:] == [f"s{i:04d}" for i in range(10, 14)]  # the next shard is read in full


def test_missing_manifest_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"dataset {tmp_path} has no manifest.json"):
        DatasetIndex.from_dir(tmp_path)


def test_manifest_that_is_not_json_names_its_path(tmp_path):
    text_dataset(tmp_path, [2])
    (tmp_path / "manifest.json").write_text('{"shards": [')
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'manifest.json'} is not valid JSON")):
        DatasetIndex.from_dir(tmp_path)


def test_an_endless_stream_that_owns_no_sample_ends_at_once(tmp_path):
    index = text_dataset(tmp_path, [2])  # of 4 streams, 1 and 3 own a sample each
    assert [keys_of(DatasetStream(index, 0, s, 4, seed=0, shuffle_buffer=0)) for s in (0, 2)] == [[], []]


def test_pick_dataset_follows_weights_deterministically():
    counts = [0, 0]
    for _ in range(8):
        counts[pick_dataset([0.75, 0.25], counts, [True, True])] += 1
    assert counts == [6, 2]
    assert pick_dataset([0.75, 0.25], [0, 0], [False, True]) == 1


def test_blend_respects_weights_within_one_sample(tmp_path, sp_tokenizer):
    a = text_dataset(tmp_path / "a", [20, 20], prefix="a")
    b = text_dataset(tmp_path / "b", [15], prefix="b")
    spec = StreamSpec(indexes=(a, b), weights=(3.0, 1.0), dp_rank=0, dp_size=1, num_workers=1, seed=0,
                      shuffle_buffer=4, num_epochs=None,
                      preprocessor=SamplePreprocessor(sp_tokenizer, 16, ImagePreprocessor(64)),
                      max_length=512, overlong="truncate")
    items = spec.worker_items(0)
    sources = Counter(next(items).sample.sample_id[0] for _ in range(200))
    assert abs(sources["a"] - 150) <= 1 and abs(sources["b"] - 50) <= 1


def test_finite_blend_ends_after_every_dataset_is_exhausted(tmp_path, sp_tokenizer):
    a = text_dataset(tmp_path / "a", [6], prefix="a")
    b = text_dataset(tmp_path / "b", [2], prefix="b")
    spec = StreamSpec(indexes=(a, b), weights=(1.0, 1.0), dp_rank=0, dp_size=1, num_workers=1, seed=0,
                      shuffle_buffer=0, num_epochs=1,
                      preprocessor=SamplePreprocessor(sp_tokenizer, 16, ImagePreprocessor(64)),
                      max_length=512, overlong="truncate")
    items = list(spec.worker_items(0))
    assert items[-1].sample is None and items[-1].state["done"] == [True, True]
    assert sorted(i.sample.sample_id for i in items[:-1]) == [f"a{i:04d}" for i in range(6)] + ["b0000", "b0001"]
