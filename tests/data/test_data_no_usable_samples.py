"""When no sample can be produced the loader fails with ``NoUsableSamples`` (counts, reasons,
datasets) instead of looping forever; a stream that alone is unusable stops and the others go on."""

import logging
import threading
from collections import Counter

import pytest
from shard_builder import make_sample, split_loader_options, write_dataset

from megatron_infimed.data import loader as loader_module
from megatron_infimed.data.blending import REPORT_EVERY, StreamSpec
from megatron_infimed.data.dry_spell import NoUsableSamples
from megatron_infimed.data.images import ImagePreprocessor
from megatron_infimed.data.loader import build_train_loader
from megatron_infimed.data.preprocess import SamplePreprocessor
from megatron_infimed.data.streaming import DatasetIndex

HANG_S = 60  # far above any of these runs; reaching it means the loader spins without yielding


def within(seconds, fn):
    """``fn()``'s result or exception, or a test failure if it has not returned after ``seconds``."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the test thread as is
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds}s: the loader hangs instead of failing")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def dataset(root, shard_sizes, **sample_args):
    samples = [make_sample(f"k{i:03d}", seed=i, **sample_args) for i in range(sum(shard_sizes))]
    return str(write_dataset(root, samples, shard_sizes))


def loader_for(paths, tokenizer, model_config, dp_rank=0, dp_size=1, **overrides):
    options = {"paths": tuple(paths), "seq_length": 192, "num_workers": 1, "worker_processes": False,
               "shuffle_buffer": 0, "packing_buffer": 4, "seed": 7, "shard_retries": 0, "shard_retry_delay": 0.0,
               **overrides}
    data, batch, seed = split_loader_options(options)
    return build_train_loader(data, batch, model_config, tokenizer, dp_rank, dp_size, seed)


def trained(loader, packs):
    return Counter(s for _ in range(packs) for s in next(loader).sample_ids)


@pytest.mark.parametrize("num_epochs", [None, 1])
@pytest.mark.parametrize("packing", [True, False])
def test_seq_length_below_every_sample_fails_with_the_drop_counts(tmp_path, sp_tokenizer, tiny_config,
                                                                   num_epochs, packing):
    path = dataset(tmp_path, [6, 6])
    loader = loader_for([path], sp_tokenizer, tiny_config, seq_length=20, num_epochs=num_epochs, packing=packing)
    with pytest.raises(NoUsableSamples, match=r"stream 0 of 1 \(dp rank 0, worker 0\): no usable sample in a "
                                              r"whole epoch \(epoch 0 of .*\); 12 read: 12 longer than the "
                                              r"20-token pack capacity") as failure:
        within(HANG_S, lambda: next(loader))
    assert path in str(failure.value)
    assert loader.stats()["data/dropped"] == 12  # the counts reached the loader without any good sample


def test_all_shards_missing_fails_naming_a_missing_shard(tmp_path, sp_tokenizer, tiny_config):
    path = dataset(tmp_path, [5, 7])
    for shard in (tmp_path / "shards").iterdir():
        shard.unlink()
    loader = loader_for([path], sp_tokenizer, tiny_config)
    with pytest.raises(NoUsableSamples, match=r"; 12 read: 12 bad input: shard_unopenable 12 \(e\.g\. "
                                              r".*shard-00000[01]\.tar"):
        within(HANG_S, lambda: next(loader))
    assert loader.stats()["data/bad/shard_unopenable"] == 12


def test_every_member_bad_fails_with_the_reason(tmp_path, sp_tokenizer, tiny_config):
    samples = [make_sample(f"b{i}", seed=i) for i in range(8)]
    for sample in samples:
        sample["raw_json"] = b"{broken"
    path = str(write_dataset(tmp_path, samples, [4, 4]))
    loader = loader_for([path], sp_tokenizer, tiny_config, num_workers=2, shuffle_buffer=4)
    with pytest.raises(NoUsableSamples, match=r"no stream can produce.*stream 0 of 2.*bad_json 4.*"
                                              r"stream 1 of 2.*bad_json 4"):
        within(HANG_S, lambda: next(loader))


def test_what_is_skipped_is_logged_while_no_usable_sample_comes(tmp_path, sp_tokenizer, tiny_config, caplog,
                                                                monkeypatch):
    monkeypatch.setattr(loader_module, "DRY_WARNING_S", 0.0)  # log at every report instead of once a minute
    path = dataset(tmp_path, [REPORT_EVERY + 6])
    loader = loader_for([path], sp_tokenizer, tiny_config, seq_length=20)
    with caplog.at_level(logging.WARNING, logger="megatron_infimed.data.loader"), pytest.raises(NoUsableSamples):
        within(HANG_S, lambda: next(loader))
    waiting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("no usable sample for")]
    counts = [m.split("since the last one: ")[1] for m in waiting]
    assert counts == [f"no_trainable_token_after_truncation {n}" for n in (REPORT_EVERY, REPORT_EVERY + 6)]


def test_a_worker_whose_shards_are_missing_stops_and_the_other_goes_on(tmp_path, sp_tokenizer, tiny_config,
                                                                          caplog):
    path = dataset(tmp_path, [6, 6], num_images=0)
    (tmp_path / "shards" / "shard-000001.tar").unlink()
    loader = loader_for([path], sp_tokenizer, tiny_config, num_workers=2, packing=False)
    with caplog.at_level(logging.WARNING, logger="megatron_infimed.data.loader"):
        seen = within(HANG_S, lambda: trained(loader, 18))  # three epochs of the readable shard
    assert seen == Counter({f"k{i:03d}": 3 for i in range(6)})
    stopped = [r.getMessage() for r in caplog.records if r.getMessage().endswith("the stream stops")]
    assert len(stopped) == 1
    assert "stream 1 of 2 (dp rank 0, worker 1): no usable sample in a whole epoch" in stopped[0]
    assert "shard_unopenable 6" in stopped[0] and "shard-000001.tar" in stopped[0]
    assert loader.stats()["data/bad/shard_unopenable"] == 6  # read once, then the stream stopped


def test_a_stopped_stream_stays_stopped_on_resume_and_the_packs_continue_exactly(tmp_path, sp_tokenizer,
                                                                                   tiny_config):
    path = dataset(tmp_path, [6, 6], num_images=0)
    (tmp_path / "shards" / "shard-000000.tar").unlink()
    reference = loader_for([path], sp_tokenizer, tiny_config, num_workers=2, packing=False)
    expected = within(HANG_S, lambda: [next(reference).sample_ids for _ in range(10)])
    first = loader_for([path], sp_tokenizer, tiny_config, num_workers=2, packing=False)
    head = within(HANG_S, lambda: [next(first).sample_ids for _ in range(4)])
    resumed = loader_for([path], sp_tokenizer, tiny_config, num_workers=2, packing=False)
    resumed.load_state_dict(first.state_dict())
    assert head + within(HANG_S, lambda: [next(resumed).sample_ids for _ in range(6)]) == expected
    assert resumed.stats()["data/bad/shard_unopenable"] == 6


@pytest.mark.slow
def test_worker_processes_report_the_failure_and_keep_the_readable_shard(tmp_path, sp_tokenizer, tiny_config):
    path = dataset(tmp_path, [6, 6], num_images=0)
    (tmp_path / "shards" / "shard-000001.tar").unlink()
    loader = loader_for([path], sp_tokenizer, tiny_config, num_workers=2, packing=False, worker_processes=True)
    assert within(HANG_S, lambda: trained(loader, 12)) == Counter({f"k{i:03d}": 2 for i in range(6)})
    loader.close()
    (tmp_path / "shards" / "shard-000000.tar").unlink()
    broken = loader_for([path], sp_tokenizer, tiny_config, num_workers=2, packing=False, worker_processes=True)
    with pytest.raises(NoUsableSamples, match="stream 0 of 2.*stream 1 of 2"):
        within(HANG_S, lambda: next(broken))


def test_streams_that_own_no_sample_stop_and_the_others_go_on(tmp_path, sp_tokenizer, tiny_config):
    path = dataset(tmp_path, [2], num_images=0)
    loader = loader_for([path], sp_tokenizer, tiny_config, num_workers=3, packing=False)  # endless, 3 streams
    assert within(HANG_S, lambda: trained(loader, 6)) == Counter({"k000": 3, "k001": 3})


def test_a_rank_whose_streams_own_no_sample_fails(tmp_path, sp_tokenizer, tiny_config):
    path = dataset(tmp_path, [1], num_images=0)
    loader = loader_for([path], sp_tokenizer, tiny_config, dp_rank=0, dp_size=2)  # rank 1 owns the sample
    with pytest.raises(NoUsableSamples, match=r"stream 0 of 2 \(dp rank 0, worker 0\): owns no sample "
                                              r"\(.*: 1 samples, split over 2 streams\)"):
        within(HANG_S, lambda: next(loader))


def test_bad_input_is_handed_on_in_bounded_reports_before_any_good_sample(tmp_path, sp_tokenizer):
    samples = [make_sample(f"r{i:03d}", num_images=0, seed=i) for i in range(2 * REPORT_EVERY + 5)]
    for sample in samples[:-1]:
        sample["raw_json"] = b"{broken"
    index = DatasetIndex.from_dir(write_dataset(tmp_path, samples, [len(samples)]))
    spec = StreamSpec(indexes=(index,), weights=(1.0,), dp_rank=0, dp_size=1, num_workers=1, seed=0,
                      shuffle_buffer=0, num_epochs=None,
                      preprocessor=SamplePreprocessor(sp_tokenizer, 16, ImagePreprocessor(64)),
                      max_length=512, overlong="truncate")
    items = spec.worker_items(0)
    head = [next(items) for _ in range(3)]
    assert [len(item.errors) for item in head] == [REPORT_EVERY, REPORT_EVERY, 4]
    assert [item.sample is None for item in head] == [True, True, False] and not any(i.ended for i in head)
    assert head[2].sample.sample_id == samples[-1]["key"]
