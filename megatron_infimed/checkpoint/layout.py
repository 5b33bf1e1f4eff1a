"""Where a checkpoint's files lie: the one owner of the on-disk layout (free of megatron-core, so
tools that only read a checkpoint, such as ``infimed-convert export-hf``, do not pay its import)::

    ROOT/
      latest_checkpointed_iteration.txt    the tracker: which iteration folder is the latest complete one
      iter_0000020/                        ``iteration_dir(ROOT, 20)``
        model_config.json  run_config.json  layout.json  tokenizer/  checksums.sha256  ...
      .iter_0000040.partial/ ...           never: a hidden ``.NAME.partial`` is how ``atomic_folder``
                                           writes a whole folder before it gets its name

``dist.py`` writes and reads the tensors (megatron-core ``dist_checkpointing``).
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from megatron_infimed.checkpoint.integrity import MANIFEST

TRACKER = "latest_checkpointed_iteration.txt"
MODEL_CONFIG = "model_config.json"
RUN_CONFIG = "run_config.json"
TOKENIZER_DIR = "tokenizer"
_ITERATION_DIR = re.compile(r"iter_(\d{7})")


def iteration_dir(root: str | Path, iteration: int) -> Path:
    return Path(root) / f"iter_{iteration:07d}"


def iteration_folder(checkpoint: str | Path) -> Path:
    """The iteration folder a user names: ``CKPT`` itself (it holds ``.metadata``), or the one
    ``CKPT``'s tracker names."""
    path = Path(checkpoint)
    if (path / ".metadata").is_file():
        return path
    iteration = latest_iteration(path)
    if iteration is None:
        raise FileNotFoundError(f"{path} is not a checkpoint: no {TRACKER} and no .metadata")
    return iteration_dir(path, iteration)


def partial_folder(output: str | Path) -> Path:
    """Where ``atomic_folder`` writes ``output`` before it is complete: a hidden sibling."""
    output = Path(output)
    return output.with_name(f".{output.name}.partial")


@contextmanager
def atomic_folder(output: str | Path, owner: bool = True) -> Iterator[Path]:
    """Write a whole folder under its hidden ``.NAME.partial`` name; it becomes ``output`` only when
    the block ends without an error, and any error removes it. Under torch.distributed every rank
    writes into the yielded folder and only the ``owner`` (rank 0) clears, renames or removes it;
    the caller synchronises the ranks around the block."""
    output, partial = Path(output), partial_folder(output)
    if output.exists():
        raise FileExistsError(f"output {output} already exists; remove it or choose another folder")
    if owner:
        shutil.rmtree(partial, ignore_errors=True)  # left by a crashed earlier attempt
    try:
        yield partial
        if owner:
            partial.rename(output)
    except BaseException:
        if owner:
            shutil.rmtree(partial, ignore_errors=True)
        raise


def is_complete(directory: Path) -> bool:
    """Did a save of this folder finish? Its checksum manifest (or, for checkpoints saved before
    manifests, ``layout.json``) is written once every rank's files are in place, before the tracker."""
    return (directory / MANIFEST).is_file() or (directory / "layout.json").is_file()


def complete_iterations(root: str | Path) -> list[int]:
    """The iterations under ``root`` whose save finished, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = (_ITERATION_DIR.fullmatch(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m and is_complete(root / m.group(0)))


def latest_iteration(root: str | Path | None) -> int | None:
    """The iteration the tracker names, or None when ``root`` holds no tracker.

    A tracker naming a folder that is gone (deleted by hand, lost with a node's disk) falls back to
    the newest complete iteration, with a warning; with none left it is an error, never a fresh start.
    """
    if not root:
        return None
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise ValueError(f"{tracker} holds '{text}', expected an iteration number")
    iteration = int(text)
    if is_complete(iteration_dir(root, iteration)):
        return iteration
    complete = complete_iterations(root)
    if not complete:
        raise FileNotFoundError(f"{tracker} names iteration {iteration}, but {iteration_dir(root, iteration)} "
                                f"is missing or unfinished and {root} holds no other complete checkpoint")
    warnings.warn(f"{tracker} names iteration {iteration}, but {iteration_dir(root, iteration)} is missing "
                  f"or unfinished; using the newest complete checkpoint, iteration {complete[-1]}", stacklevel=2)
    return complete[-1]


def has_checkpoint(root: str | Path | None) -> bool:
    return latest_iteration(root) is not None


def write_tracker(root: str | Path, iteration: int) -> None:
    """Name ``iteration`` as the latest, atomically: a reader sees the old number or the new one."""
    tmp = Path(root) / (TRACKER + ".tmp")
    tmp.write_text(str(iteration))
    os.replace(tmp, Path(root) / TRACKER)


def _leftover(path: Path) -> bool:
    """What a killed save leaves behind, and nothing else: an unfinished iteration folder, the
    tracker's temporary file, a hidden ``.partial`` folder."""
    if path.is_dir():
        return (bool(_ITERATION_DIR.fullmatch(path.name)) and not is_complete(path)) or (
            path.name.startswith(".") and path.name.endswith(".partial"))
    return path.name == TRACKER + ".tmp"


def resume_point(load: str | Path | None, save: str | Path | None) -> tuple[int | None, str]:
    """(iteration to resume from, or None for a new run; the line that tells the user which).

    | ``--load``                                   | outcome                                     |
    |----------------------------------------------|---------------------------------------------|
    | holds a tracker                              | resume from the iteration it names          |
    | missing, empty, only unfinished saves        | a new run, said so                          |
    | an ``iter_*`` folder, or anything else       | an error that names the folder              |

    A new run never writes into a ``--save`` folder holding another run's tracker.
    """
    note = "no --load given"
    if load:
        root = Path(load)
        if _ITERATION_DIR.fullmatch(root.name) or (root / ".metadata").is_file():
            raise ValueError(f"--load {root} is one iteration's folder; pass the folder that holds {TRACKER} "
                             f"({root.parent})")
        iteration = latest_iteration(root)
        if iteration is not None:
            return iteration, f"resuming from iteration {iteration} of {root}"
        if root.exists() and not root.is_dir():
            raise ValueError(f"--load {root} is a file, not a checkpoint folder")
        entries = sorted(root.iterdir()) if root.is_dir() else []
        foreign = [p.name for p in entries if not _leftover(p)]
        if foreign:
            raise ValueError(f"--load {root} holds no checkpoint ({TRACKER} is missing) but is not empty "
                             f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); is it the right "
                             f"folder? Point --load at a run's checkpoint folder, or at a new or empty one")
        note = (f"--load {root} does not exist" if not root.exists() else
                f"--load {root} holds only unfinished saves" if entries else f"--load {root} is empty")
    saved = latest_iteration(save) if save else None
    if saved is not None:
        raise ValueError(f"--save {save} already holds a run's checkpoints (iteration {saved}); a new run would "
                         f"overwrite them. Pass --load {save} to resume that run, or choose another --save")
    return None, f"{note}: starting a new run"


def pretrained_point(path: str | Path) -> int:
    """The iteration ``--pretrained-checkpoint`` starts a new run from; a folder without a checkpoint
    is an error (the stage that writes it has not run, or the path is wrong)."""
    iteration = latest_iteration(path)
    if iteration is None:
        raise ValueError(f"--pretrained-checkpoint {path} holds no checkpoint (no {TRACKER}): train the stage "
                         f"that writes it first, or point at another checkpoint")
    return iteration
