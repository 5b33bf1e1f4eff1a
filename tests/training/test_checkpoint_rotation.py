"""Rotation: ``--keep-last N`` keeps the newest N complete checkpoints, deleted by rank 0 in a
background thread so no rank waits on it in a barrier, one deletion at a time."""

import os
import shutil
import subprocess
import sys
import threading

import pytest

from megatron_infimed.checkpoint import dist
from megatron_infimed.checkpoint.layout import latest_iteration


def iterations(root) -> list[int]:
    return sorted(int(p.name[5:]) for p in root.glob("iter_*"))


def make_iterations(root, *numbers: int) -> None:
    for n in numbers:
        (root / f"iter_{n:07d}").mkdir(parents=True)


def test_rotation_keeps_the_newest_and_never_touches_a_later_save_in_progress(tmp_path):
    make_iterations(tmp_path, 1, 2, 3, 4, 5)
    dist._start_removal(str(tmp_path), 4, keep_last=2)
    dist.wait_for_removal()
    assert iterations(tmp_path) == [3, 4, 5]


def test_keep_last_0_keeps_everything(tmp_path):
    make_iterations(tmp_path, 1, 2, 3)
    dist._start_removal(str(tmp_path), 3, keep_last=0)
    dist.wait_for_removal()
    assert iterations(tmp_path) == [1, 2, 3]


def test_the_deletion_runs_beside_the_caller_and_the_next_one_waits_for_it(tmp_path, monkeypatch):
    make_iterations(tmp_path, 1, 2, 3, 4)
    release, rmtree = threading.Event(), shutil.rmtree

    def slow_rmtree(path, ignore_errors=False):
        release.wait(30)
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(dist.shutil, "rmtree", slow_rmtree)
    dist._start_removal(str(tmp_path), 3, keep_last=1)
    assert iterations(tmp_path) == [1, 2, 3, 4]  # returned with the deletion still running
    following = threading.Thread(target=dist._start_removal, args=(str(tmp_path), 4, 1))
    following.start()
    following.join(0.5)
    assert following.is_alive()  # the next save's rotation waits for the one in flight
    release.set()
    following.join(30)
    dist.wait_for_removal()
    assert iterations(tmp_path) == [4]


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--async-save"]], ids=["sync", "async"])
def test_a_run_keeps_its_last_checkpoints(tmp_path, flags):
    command = [sys.executable, "-m", "megatron_infimed.cli.train", "--preset", "tiny", "--mock-data",
               "--seq-length", "128", "--train-iters", "4", "--save-interval", "1", "--keep-last", "2",
               "--save", str(tmp_path / "ckpt"), *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert iterations(tmp_path / "ckpt") == [3, 4]
    assert latest_iteration(tmp_path / "ckpt") == 4
