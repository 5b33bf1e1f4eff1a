"""A release's files: bytes to text, a JSON list of entries, and where the images are.

Text is decoded with ``surrogateescape``: a byte that is not UTF-8 survives as a lone surrogate in
the one entry that holds it, instead of failing the whole file. Curation then drops that entry
(``text_quality/invalid_utf8``, as for its own formats); evaluation refuses it, naming the entry.

Image folder, one rule for every release, format and caller:

| ``image_root`` | image names are relative to                                                   |
|----------------|-------------------------------------------------------------------------------|
| given          | ``image_root``, as given                                                      |
| not given      | the data file's folder, made absolute (so ``data.json`` does not give ``""``); |
|                | its ``images/`` or ``imgs/`` instead where the release ships one and it exists |

An absolute image name stands as it is; a name without suffix whose file is absent tries
``.jpg .png .jpeg .dcm`` (PathVQA names its images ``train_0001``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

GUESSED_SUFFIXES = (".jpg", ".png", ".jpeg", ".dcm")


class ReleaseFileError(ValueError):
    """A file that cannot be read as a whole: not JSON, not a list, missing CSV columns."""


def decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def load_json_list(path: str | Path) -> list:
    """The file's JSON list. Example error: ``a.json: not valid JSON at line 2 column 11: Expecting ...``."""
    try:
        data = json.loads(decode_text(Path(path).read_bytes()))
    except json.JSONDecodeError as err:
        raise ReleaseFileError(f"{path}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    if not isinstance(data, list):
        raise ReleaseFileError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def image_folder(
    data_file: str | Path, image_root: str | Path | None = None, release_folder: str | None = None
) -> Path:
    """The folder image names are relative to; see the module table."""
    if image_root:
        return Path(image_root)
    folder = Path(os.path.abspath(data_file)).parent
    if release_folder and (folder / release_folder).is_dir():
        return folder / release_folder
    return folder


def resolve_image(folder: Path, name: str) -> Path:
    """``folder / name``; a name without suffix whose file is absent takes the first suffix that exists.

    Example: ``resolve_image(Path("/d"), "train_0001")`` is ``/d/train_0001.jpg`` when that file exists
    and ``/d/train_0001`` when no guessed suffix does (then loading it reports the missing file).
    """
    path = folder / name
    if path.suffix or path.exists():
        return path
    for suffix in GUESSED_SUFFIXES:
        candidate = Path(f"{path}{suffix}")
        if candidate.exists():
            return candidate
    return path
