"""One reader per ``--format``; each turns an input file into common ``Record``s.

| format                  | input                                | conversation                           |
|-------------------------|--------------------------------------|----------------------------------------|
| llava                   | JSON list or JSONL of LLaVA records  | as given (``<image>`` placeholders)    |
| captions                | JSONL ``{"id", "image", "caption"}`` | ``<image>\\nDescribe this image.`` -> caption |
| vqa_rad, slake, pathvqa | the release (``megatron_infimed.datasets``) | ``<image>\\n{question}`` -> answer |

LLaVA and captions are curation's own formats and are parsed here. A release is parsed by its
reader in ``megatron_infimed.datasets`` and only wrapped here: a row becomes a question -> answer
record with the release's labels as metadata, a malformed entry a ``parse/<kind>`` ``RecordError``.
Releases are read as training data, so ``--split`` defaults to ``train``.

A whole file that is missing or not JSON is an error before any work starts (``InputError``);
a bad *record* is a ``RecordError`` value with a named reason and its line. Text is decoded
with ``surrogateescape`` so invalid UTF-8 survives as lone surrogates and is dropped by the
text-quality scorer with a reason, instead of failing the whole file. Image paths follow the one
image-folder rule of ``megatron_infimed.datasets.files`` for every format.

Split/language selection is the release reader's: selected records are the run's ``total``; the
rest are reported as ``excluded``, not as drops.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from megatron_infimed.curation.record import Record, RecordError, structural_error
from megatron_infimed.data.conversation_format import IMAGE_PLACEHOLDER
from megatron_infimed.datasets import RELEASES, Malformed, ReleaseFileError, ReleaseRow
from megatron_infimed.datasets.files import decode_text, image_folder, load_json_list, resolve_image
from megatron_infimed.datasets.pathvqa import PathVqaRow
from megatron_infimed.datasets.slake import SlakeRow
from megatron_infimed.datasets.vqa_rad import VqaRadRow

CAPTION_PROMPT = "Describe this image."


class InputError(ValueError):
    """The input as a whole is unusable (missing file, unknown format, not JSON)."""


@dataclass(slots=True)
class ReadResult:
    items: list[Record | RecordError] = field(default_factory=list)
    excluded: int = 0  # records left out by --split / --language
    image_root: str = ""  # the folder image paths were resolved against (--image-root or the default)


def _jsonl_items(path: str) -> list[tuple[str, object]]:
    """(location, parsed object | RecordError) per non-blank line."""
    out = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = decode_text(raw).strip()
            if not line:
                continue
            loc = f"{os.path.basename(path)}:{lineno}"
            try:
                out.append((loc, json.loads(line)))
            except json.JSONDecodeError as exc:
                out.append((loc, RecordError(None, "parse/malformed_json", f"{path} line {lineno}: {exc.msg}", loc)))
    return out


def _image_field(value: object) -> list[str] | None:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _llava_record(obj: object, loc: str, folder: Path, source: str) -> Record | RecordError:
    if not isinstance(obj, dict):
        return RecordError(None, "parse/bad_record", f"{loc}: expected a JSON object, got {type(obj).__name__}", loc)
    rid = str(obj.get("id", loc))
    images = _image_field(obj.get("image"))
    if images is None:
        return RecordError(rid, "parse/bad_field_type", f"{loc}: 'image' must be a string or list of strings", loc)
    conversations = obj.get("conversations")
    problem = structural_error(conversations)
    if problem:
        return RecordError(rid, problem[0], f"{loc} (id {rid}): {problem[1]}", loc)
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    turns = [{"from": t["from"], "value": t["value"]} for t in conversations]
    paths = [str(resolve_image(folder, name)) for name in images]
    return Record(rid, str(obj.get("source", source)), turns, paths, dict(meta), loc)


def read_llava(path: str, *, image_root: str | None, source: str, **_: object) -> ReadResult:
    folder = image_folder(path, image_root)
    result = ReadResult(image_root=str(folder))
    if path.endswith(".jsonl"):
        pairs = _jsonl_items(path)
    else:
        pairs = [(f"{os.path.basename(path)}[{i}]", obj) for i, obj in enumerate(load_json_list(path))]
    for loc, obj in pairs:
        result.items.append(obj if isinstance(obj, RecordError) else _llava_record(obj, loc, folder, source))
    return result


def read_captions(path: str, *, image_root: str | None, source: str, **_: object) -> ReadResult:
    folder = image_folder(path, image_root)
    result = ReadResult(image_root=str(folder))
    for loc, obj in _jsonl_items(path):
        if isinstance(obj, RecordError):
            result.items.append(obj)
            continue
        if not isinstance(obj, dict):
            result.items.append(RecordError(None, "parse/bad_record", f"{loc}: expected a JSON object", loc))
            continue
        rid = str(obj.get("id", loc))
        image, caption = obj.get("image"), obj.get("caption")
        if not isinstance(image, str) or not isinstance(caption, str) or not caption.strip():
            detail = f"{loc} (id {rid}): expected string 'image' and non-empty string 'caption'"
            result.items.append(RecordError(rid, "parse/missing_field", detail, loc))
            continue
        conversations = [
            {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{CAPTION_PROMPT}"},
            {"from": "gpt", "value": caption.strip()},
        ]
        meta = {"question_type": "caption", **(obj.get("metadata") or {})}
        result.items.append(Record(rid, source, conversations, [str(resolve_image(folder, image))], meta, loc))
    return result


# What each release's records keep as metadata (stored in the shard, used for report strata).
def _vqa_rad_metadata(row: VqaRadRow) -> dict:
    return {"organ": row.organ, "answer_type": row.answer_type, "question_type": row.question_type,
            "phrase_type": row.phrase_type, "split": row.split, "image_name": row.image_name}


def _slake_metadata(row: SlakeRow) -> dict:
    return {"modality": row.modality, "organ": row.organ, "answer_type": row.answer_type,
            "content_type": row.content_type, "q_lang": row.q_lang, "img_id": row.img_id}


def _pathvqa_metadata(row: PathVqaRow) -> dict:
    return {"answer_type": row.answer_type, "modality": "pathology"}


RELEASE_METADATA: dict[str, Callable[..., dict]] = {
    "vqa_rad": _vqa_rad_metadata,
    "slake": _slake_metadata,
    "pathvqa": _pathvqa_metadata,
}


def _release_record(row: ReleaseRow, source: str, metadata: dict) -> Record:
    conversations = [
        {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{row.question}"},
        {"from": "gpt", "value": row.answer},
    ]
    return Record(row.id, source, conversations, [str(row.image)], metadata, row.where)


def read_release(name: str, path: str, *, image_root: str | None, source: str, split: str, language: str) -> ReadResult:
    """Release ``name``'s rows as records and its malformed entries as ``parse/<kind>`` errors, in file order."""
    release = RELEASES[name]
    selection = {key: value for key, value in (("split", split), ("language", language)) if key in release.selection}
    read = release.read(path, image_root=image_root, **selection)
    to_metadata = RELEASE_METADATA[name]
    items = [
        RecordError(item.id, f"parse/{item.kind}", item.detail, item.where) if isinstance(item, Malformed)
        else _release_record(item, source, to_metadata(item))
        for item in read.entries
    ]
    return ReadResult(items, read.excluded, str(read.image_folder))


# format -> reader(path, *, image_root, source, split, language)
READERS: dict[str, Callable[..., ReadResult]] = {
    "llava": read_llava,
    "captions": read_captions,
    **{name: partial(read_release, name) for name in RELEASE_METADATA},
}


def check_input(fmt: str, path: str | None) -> None:
    """Fail fast, before any work, on an unknown format or a missing input file."""
    if fmt not in READERS:
        raise InputError(f"unknown --format {fmt!r}; expected one of {sorted(READERS)}")
    if not path or not os.path.isfile(path):
        raise InputError(f"--input {path!r} is not a file (format {fmt!r} needs its JSON/JSONL file)")


def read_records(
    fmt: str, path: str, *, image_root: str | None = None, source: str | None = None, split: str = "train",
    language: str = "en",
) -> ReadResult:
    """Read every record of ``path`` in ``fmt``; see the module table."""
    check_input(fmt, path)
    try:
        return READERS[fmt](path, image_root=image_root, source=source or fmt, split=split, language=language)
    except ReleaseFileError as err:
        raise InputError(str(err)) from err
