"""Checkpoint writers whose helper processes die with the trainer.

megatron-core's torch_dist writer (synchronous saves too, not only ``AsyncCallsQueue``'s) reports
through a queue served by a ``multiprocessing`` manager, a spawned process, plus the resource
tracker it keeps alive. Nothing in it watches the trainer: after a ``kill -9`` both lived on, about
275 MB each, two more per killed run, and so did the writer processes megatron forks when a kill
landed during a save. ``tie_writer_to_this_process`` starts that manager ourselves,
before the first save, with an initializer that ties it to the trainer: the kernel's parent-death
signal where Linux offers it, and a watchdog on the parent's pid everywhere. When the manager goes,
the resource tracker sees its last pipe close and exits too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from multiprocessing.managers import SyncManager

from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

_PR_SET_PDEATHSIG = 1
_forks_tied = False
_forked_from_main = False


def _kill_me_with_parent() -> None:
    """Linux: the kernel sends this process SIGKILL when the thread that made it exits."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _note_forking_thread() -> None:
    global _forked_from_main
    _forked_from_main = threading.current_thread() is threading.main_thread()


def _tie_fork() -> None:
    # The signal follows the forking *thread*: a child forked from a short-lived thread (a
    # DataLoader iterated in a helper thread) would be killed when that thread ends.
    if _forked_from_main:
        _kill_me_with_parent()


def exit_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """Run in a child process: end it when ``parent_pid`` is gone."""
    _kill_me_with_parent()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def tie_writer_to_this_process() -> None:
    """Serve megatron-core's writer results queue from a manager that dies with this process, and
    make the writer processes megatron forks (one per bucket, and the async caller) die with it
    too (idempotent; before the first save)."""
    global _forks_tied
    if not _forks_tied:
        os.register_at_fork(before=_note_forking_thread, after_in_child=_tie_fork)
        _forks_tied = True
    if filesystem_async._results_queue is None:
        manager = SyncManager(ctx=mp.get_context("spawn"))
        manager.start(initializer=exit_with_parent, initargs=(os.getpid(),))
        filesystem_async._results_queue = manager.Queue()


def async_calls_queue() -> AsyncCallsQueue:
    """megatron-core's queue of asynchronous saves, its writer tied to this process."""
    tie_writer_to_this_process()
    return AsyncCallsQueue()
