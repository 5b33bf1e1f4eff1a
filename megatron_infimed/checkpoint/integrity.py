"""A checksum manifest per checkpoint folder: corrupted bytes fail loudly, with the file's name.

``checksums.sha256`` lists every file of an iteration folder in ``sha256sum`` format
(``<hex>  <relative path>``), so ``sha256sum -c checksums.sha256`` checks it by hand too. It is
written once every rank's files are complete and before the tracker names the folder; a folder
without one (saved before manifests existed) loads with a warning. Hashing reads every byte once,
so ``--no-verify-checkpoint`` skips it for huge checkpoints.
"""

from __future__ import annotations

import hashlib
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MANIFEST = "checksums.sha256"


class CheckpointCorrupted(ValueError):
    """A checkpoint file is missing or its bytes differ from those written at save time."""


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def _hash_all(directory: Path, relative: list[str], threads: int) -> list[str]:
    # hashlib releases the GIL on large buffers: threads hash several shard files at once.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(lambda name: _digest(directory / name), relative))


def write_manifest(directory: str | Path, threads: int = 4) -> Path:
    """Hash every file under ``directory`` into ``directory/checksums.sha256`` (atomically)."""
    directory = Path(directory)
    relative = [p.relative_to(directory).as_posix() for p in _files(directory)]
    digests = _hash_all(directory, relative, threads)
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text("".join(f"{d}  {name}\n" for d, name in zip(digests, relative)))
    tmp.replace(directory / MANIFEST)
    return directory / MANIFEST


def read_manifest(directory: str | Path) -> dict[str, str] | None:
    """``{relative path: sha256}``, or None when the folder has no manifest."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise CheckpointCorrupted(f"{path}:{number}: expected '<sha256>  <file>', found {line[:80]!r}")
        entries[name] = digest
    return entries


def verify(directory: str | Path, threads: int = 4, part: tuple[int, int] = (0, 1)) -> bool:
    """Check every file the manifest lists; raise ``CheckpointCorrupted`` naming the first bad one.

    ``part=(i, n)`` checks only every n-th listed file from the i-th, so n ranks share the reading.
    Returns False (after a warning) when the folder has no manifest, True when all files match.
    """
    directory = Path(directory)
    entries = read_manifest(directory)
    if entries is None:
        warnings.warn(f"checkpoint {directory} has no {MANIFEST} (saved before checksums were written); "
                      f"its bytes are not verified", stacklevel=2)
        return False
    entries = {name: entries[name] for name in list(entries)[part[0]::part[1]]}
    missing = [name for name in entries if not (directory / name).is_file()]
    if missing:
        raise CheckpointCorrupted(f"checkpoint {directory} is missing {missing[0]}"
                                  + (f" and {len(missing) - 1} more file(s)" if len(missing) > 1 else "")
                                  + f" listed in {MANIFEST}")
    names = list(entries)
    for name, actual in zip(names, _hash_all(directory, names, threads)):
        if actual != entries[name]:
            raise CheckpointCorrupted(
                f"checkpoint file {directory / name} is corrupted: its SHA-256 is {actual[:16]}..., "
                f"{MANIFEST} recorded {entries[name][:16]}... at save time (pass --no-verify-checkpoint "
                f"to load it anyway)")
    return True
