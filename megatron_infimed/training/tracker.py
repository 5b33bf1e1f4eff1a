"""The checkpoint tracker: which iteration folder under a save root is the latest complete one.

Kept apart from ``checkpoint.py`` (and free of megatron-core) so that tools which only read a
checkpoint, such as ``infimed-convert export-hf``, do not pay megatron-core's import.
"""

from __future__ import annotations

import os
from pathlib import Path

TRACKER = "latest_checkpointed_iteration.txt"


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def latest_iteration(root: str | Path | None) -> int | None:
    """The iteration the tracker names, or None when ``root`` holds no tracker."""
    if not root:
        return None
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise ValueError(f"{tracker} holds '{text}', expected an iteration number")
    return int(text)


def has_checkpoint(root: str | Path | None) -> bool:
    return latest_iteration(root) is not None


def write_tracker(root: str | Path, iteration: int) -> None:
    """Name ``iteration`` as the latest, atomically: a reader sees the old number or the new one."""
    tmp = Path(root) / (TRACKER + ".tmp")
    tmp.write_text(str(iteration))
    os.replace(tmp, Path(root) / TRACKER)
