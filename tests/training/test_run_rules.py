"""Rules a run follows before and around training, tested without starting one: which checkpoint
it resumes, which sizes it accepts, how it rewrites its logs on resume, and how a signal ends a
wait for data."""

import json
import os
import signal
import threading
import time

import pytest

from megatron_infimed.checkpoint.integrity import MANIFEST
from megatron_infimed.checkpoint.layout import TRACKER, latest_iteration, resume_point, write_tracker
from megatron_infimed.config.flags import load_config
from megatron_infimed.training.metrics import truncate_jsonl


def make_checkpoint(root, *iterations, named=None):
    for iteration in iterations:
        folder = root / f"iter_{iteration:07d}"
        folder.mkdir(parents=True)
        (folder / MANIFEST).write_text("")
    write_tracker(root, named if named is not None else iterations[-1])
    return root


def test_a_folder_with_a_tracker_is_resumed_and_says_so(tmp_path):
    make_checkpoint(tmp_path / "ckpt", 10, 20)
    expected = (20, f"resuming from iteration 20 of {tmp_path / 'ckpt'}")
    assert resume_point(tmp_path / "ckpt", tmp_path / "ckpt") == expected


@pytest.mark.parametrize("state", ["missing", "empty", "unfinished"])
def test_a_missing_empty_or_unfinished_load_folder_starts_a_new_run(tmp_path, state):
    load = tmp_path / "ckpt"
    if state != "missing":
        load.mkdir()
    if state == "unfinished":  # a first save killed half-way: no manifest, no tracker
        (load / "iter_0000005").mkdir()
        (load / (TRACKER + ".tmp")).write_text("5")
    iteration, note = resume_point(load, load)
    assert iteration is None and note.endswith("starting a new run") and str(load) in note


def test_a_folder_without_a_tracker_that_holds_other_things_is_an_error(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds no checkpoint .*manifest.json"):
        resume_point(tmp_path / "data", tmp_path / "ckpt")


def test_an_iteration_folder_as_load_names_its_parent(tmp_path):
    make_checkpoint(tmp_path / "ckpt", 4)
    with pytest.raises(ValueError, match=f"pass the folder that holds {TRACKER} \\({tmp_path / 'ckpt'}\\)"):
        resume_point(tmp_path / "ckpt" / "iter_0000004", tmp_path / "new")


def test_a_new_run_refuses_a_save_folder_holding_another_run(tmp_path):
    make_checkpoint(tmp_path / "ckpt", 3)
    with pytest.raises(ValueError, match=r"--save .* already holds a run's checkpoints \(iteration 3\)"):
        resume_point(tmp_path / "typo", tmp_path / "ckpt")
    with pytest.raises(ValueError, match="already holds"):
        resume_point(None, tmp_path / "ckpt")


def test_a_tracker_naming_a_missing_iteration_falls_back_to_the_newest_complete_one(tmp_path):
    root = make_checkpoint(tmp_path / "ckpt", 2, 4, named=6)
    (root / "iter_0000006").mkdir()  # unfinished: no manifest
    with pytest.warns(UserWarning, match="using the newest complete checkpoint, iteration 4"):
        assert latest_iteration(root) == 4


def test_a_tracker_with_no_complete_checkpoint_left_is_an_error(tmp_path):
    (tmp_path / "ckpt").mkdir()
    write_tracker(tmp_path / "ckpt", 7)
    with pytest.raises(FileNotFoundError, match="iteration 7"):
        latest_iteration(tmp_path / "ckpt")


def test_resumed_logs_keep_one_line_per_iteration(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i}) + "\n" for i in (1, 2, 3, 4)) + '{"iterat')
    assert truncate_jsonl(path, 2) == 3
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("flag, value", [
    ("--global-batch-size", "0"), ("--train-iters", "-1"), ("--save-interval", "-1"), ("--micro-batch-size", "0"),
    ("--seq-length", "0"), ("--tensor-model-parallel-size", "0"), ("--log-interval", "0"), ("--lr", "-1"),
    ("--keep-last", "-1"), ("--lr", "nan"),
])
def test_a_size_out_of_range_is_named_at_parse_time(flag, value):
    with pytest.raises(ValueError, match=f"{flag} is"):
        load_config(["--mock-data", flag, value])


def test_adam_betas_must_lie_below_one():
    with pytest.raises(ValueError, match="--adam-beta2"):
        load_config(["--mock-data", "--adam-beta2", "1.0"])


class _EndlessFeed:
    """A reader that never produces a step, as a loader stuck on unusable data would."""

    def next_step(self):
        while True:
            time.sleep(0.01)


class _SlowFeed:
    def next_step(self):
        time.sleep(0.6)
        return ["packs"]


def test_a_signal_ends_a_wait_for_data_that_outlasts_the_grace_period():
    from megatron_infimed.training.signals import StoppedBySignal, StopRequest, next_step

    stop = StopRequest(grace_seconds=0.5)
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        with pytest.raises(StoppedBySignal, match="SIGTERM: the data of iteration 8 did not come within 0.5 s") \
                as caught:
            next_step(_EndlessFeed(), stop, iteration=7)
        assert caught.value.exit_code == 128 + signal.SIGTERM
        assert time.monotonic() - started >= 0.7  # the signal at 0.3 s, then the 0.5 s grace
    finally:
        stop.restore()


@pytest.mark.slow  # waits out the 2 s grace timer
def test_data_that_comes_within_the_grace_period_is_trained():
    from megatron_infimed.training.signals import StopRequest, next_step

    stop = StopRequest(grace_seconds=2.0)
    try:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        assert next_step(_SlowFeed(), stop, iteration=7) == ["packs"]
        assert stop.signum == signal.SIGTERM  # still asks for the save at the end of the step
        time.sleep(2.5)  # the grace timer was disarmed with the wait: no late alarm
    finally:
        stop.restore()


def test_a_signal_during_compute_gives_the_next_wait_its_grace_period():
    from megatron_infimed.training.signals import StoppedBySignal, StopRequest, next_step

    stop = StopRequest(grace_seconds=0.3)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(StoppedBySignal, match="SIGUSR1"):
            next_step(_EndlessFeed(), stop, iteration=0)
    finally:
        stop.restore()


def test_a_second_sigint_aborts_at_once():
    from megatron_infimed.training.signals import StopRequest

    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT  # the first asks for a save at the end of the step
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()


def test_a_pretrained_checkpoint_without_a_tracker_is_an_error(tmp_path):
    from megatron_infimed.checkpoint.layout import pretrained_point

    (tmp_path / "stage2").mkdir()
    with pytest.raises(ValueError, match=r"--pretrained-checkpoint .*stage2 holds no checkpoint"):
        pretrained_point(tmp_path / "stage2")
    make_checkpoint(tmp_path / "stage1", 30)
    assert pretrained_point(tmp_path / "stage1") == 30
